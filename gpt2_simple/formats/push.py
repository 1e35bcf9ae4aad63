"""Share a run: `push_to_hub` uploads it to the Hugging Face Hub as a complete model repository.

This module owns the way up (the way down, `hf://ORG/NAME`, is `hub.py`'s). A push stages
`export_hf`'s repository (config, weights, vocabulary, tokenizer and generation configs, chat
template, model card; or a LoRA run's peft adapters) and optionally a GGUF file in a temporary
folder, then creates the repository and uploads the folder with `huggingface_hub`'s
`create_repo` and `upload_folder`. The run folder is only read. A missing token, a name that
belongs to someone else and a network failure are each one line naming the fix.
"""
import importlib
import os
import tempfile

from . import hub
from .folders import export_hf
from .gguf import DTYPES, export_gguf


def push_to_hub(source, repo, *, private=False, gguf=None, adapters=False, checkpoint="latest", token=None):
    """Upload a run (or model folder) to the Hub as a complete model repository.

    Args:
        source: a run folder (`checkpoint/run1`) or a model folder.
        repo: the repository to create or update, `ORG/NAME` (or `hf://ORG/NAME`).
        private: create it private.
        gguf: also upload a GGUF file of this type ('q8_0', 'f16' or 'f32'), named `<NAME>-<type>.gguf`.
        adapters: upload a LoRA run's adapters as a peft adapter repository instead of merged weights.
        checkpoint: 'latest', or one checkpoint of the run (e.g. 'model-1000').
        token: a Hub token (default: HF_TOKEN or the one `hf auth login` saved).

    Returns:
        The repository's URL.

    Raises:
        ModuleNotFoundError: huggingface_hub is not installed.
        PermissionError: no token, or one that may not write to `repo`.
        ConnectionError: the Hub cannot be reached.
        ValueError, FileNotFoundError: a bad `repo`, `gguf` or `source` (as `export_hf` raises them).
    """
    rid = hub.repo_id(repo, "repo", bare=True)
    if gguf is not None and gguf not in DTYPES:
        raise ValueError(f"gguf={gguf!r} is not a GGUF type; pass one of {', '.join(DTYPES)}, or leave it out")
    client = hub.hub_client()
    with tempfile.TemporaryDirectory(prefix="gpt2_simple-push-") as tmp:
        name = rid.split("/")[1]
        staged = export_hf(source, os.path.join(tmp, name), checkpoint=checkpoint, peft_adapters=adapters)
        if gguf is not None:
            export_gguf(source, os.path.join(staged, f"{name}-{gguf}.gguf"), dtype=gguf,
                        checkpoint=checkpoint)
        return _upload(client, rid, staged, private, token)


def _upload(client, rid, folder, private, token):
    """create_repo + upload_folder, each failure as one line."""
    from huggingface_hub import errors

    api = client.HfApi(token=token)
    try:
        url = api.create_repo(rid, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=rid, folder_path=folder, repo_type="model",
                          commit_message="Upload a GPT-2 fine-tuned with gpt2_simple")
    except errors.LocalTokenNotFoundError:
        raise PermissionError(f"no Hugging Face token to push {rid} with; log in with `hf auth login`, set HF_TOKEN, "
                              "or pass token=") from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403, 409):
            raise PermissionError(f"the Hub refused to let this token write {rid} ({hub.status_of(e)}); the "
                                  "name may belong to another account: pick another ORG/NAME, or use a token with write "
                                  "access") from None
        raise ConnectionError(f"pushing {rid} failed ({hub.status_of(e)}); nothing in the run folder changed, "
                              "try again") from None
    except _network_errors() as e:  # refused, reset, unreachable, timed out
        raise ConnectionError(f"cannot reach the Hub to push {rid} ({type(e).__name__}); check the connection "
                              "(or HF_ENDPOINT) and try again; nothing in the run folder changed") from None
    return str(getattr(url, "url", url))


def _network_errors():
    """The exceptions of a failed connection: OSError's, and those of the HTTP client huggingface_hub uses."""
    found = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
