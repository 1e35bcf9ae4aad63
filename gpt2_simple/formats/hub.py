"""Models by their Hugging Face Hub id: `hf://ORG/NAME` wherever a model is named, pulled through the Hub's cache.

This module owns naming a model by its Hub id wherever a model is named (`model_folder`,
`load_model`, `finetune(model_name=)`, `serve --model_name`); the way up is `push.py`'s.
Files come and go through `huggingface_hub` (the optional `[hub]` extra), so its cache (`HF_HOME`), endpoint
(`HF_ENDPOINT`), offline switch (`HF_HUB_OFFLINE`) and token (`HF_TOKEN`, `hf auth login`)
behave as they do for transformers. A pull downloads the files a GPT-2 needs (config,
safetensors weights and their index, vocabulary, tokenizer and generation configs, chat
template) into the cache and answers the snapshot folder, which `hf.py` reads like any Hugging
Face folder: the folder path itself (`.../models--ORG--NAME/snapshots/<commit>`) says which id
it came from (`repo_id_of`). Every failure is one line naming the fix.
"""
import os
import re

from ..model.names import model_folder as local_model_folder

PREFIX = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\][^/\\]+[/\\]?$")
FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt",
         "tokenizer_config.json", "generation_config.json", "chat_template.jinja"]
INSTALL = 'pip install "gpt2_simple[hub]" (or pip install huggingface_hub)'


def is_hub_name(name):
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).startswith(PREFIX)


def repo_id(name, argument="model_name", *, bare=False):
    """`ORG/NAME` of `hf://ORG/NAME` (also of a `bare` `ORG/NAME`, as a push's `repo` is written), checked;
    a one-line ValueError naming `argument` and the value as given otherwise."""
    text = os.fspath(name)
    prefix = PREFIX if text.startswith(PREFIX) or not bare else ""
    rid = text[len(prefix):] if text.startswith(prefix) else ""
    if not _REPO.match(rid):
        raise ValueError(f"{argument}={text!r} is not a Hub id; write it as {prefix}ORG/NAME, e.g. "
                         f"{prefix}openai-community/gpt2")
    return rid


def repo_id_of(folder):
    """The Hub id a folder was pulled from (`ORG/NAME`, from the cache's snapshot path), or None."""
    match = _SNAPSHOT.search(os.path.abspath(folder)) if folder else None
    return f"{match.group(1)}/{match.group(2)}" if match else None


def pull_again(folder):
    """A pulled folder that is gone (another machine, a cleared cache): its repository at the same commit."""
    rid = repo_id_of(folder)
    return pull(PREFIX + rid, revision=os.path.basename(os.path.normpath(folder))) if rid else None


def model_folder(model_dir, model_name):
    """The folder of a model name: `model_dir/model_name`, or for `hf://ORG/NAME` its snapshot, pulled first."""
    return pull(model_name) if is_hub_name(model_name) else local_model_folder(model_dir, model_name)


def resolve(source):
    """A folder for `source`: itself, or the snapshot of a `hf://` id."""
    return pull(source, "folder") if is_hub_name(source) else source


def pull(name, argument="model_name", revision=None):
    """Download (or find in the cache) the files of `hf://ORG/NAME`; returns the snapshot folder.

    Raises:
        ModuleNotFoundError: huggingface_hub is not installed.
        FileNotFoundError: the repository is not on the Hub (or private), not in the cache while
            offline, or holds no safetensors weights.
        ConnectionError: the Hub cannot be reached and the files are not in the cache.
    """
    rid = repo_id(name, argument)
    hub = hub_client()
    from huggingface_hub import errors

    try:
        folder = hub.snapshot_download(rid, allow_patterns=FILES, revision=revision)
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
        raise FileNotFoundError(f"{argument}={name!r}: the Hub has no repository {rid} that this token may read "
                                f"({type(e).__name__}); check the id, or log in with `hf auth login` (or set "
                                "HF_TOKEN) for a private or gated one") from None
    except errors.LocalEntryNotFoundError:
        raise ConnectionError(f"{argument}={name!r}: {rid} is not in the Hugging Face cache "
                              f"({hub.constants.HF_HUB_CACHE}) and the Hub cannot be reached"
                              f"{' (HF_HUB_OFFLINE is set)' if hub.constants.HF_HUB_OFFLINE else ''}; connect and "
                              "try again, or download it once where there is a network") from None
    except errors.HfHubHTTPError as e:
        raise ConnectionError(f"{argument}={name!r}: the Hub refused the download of {rid} ({status_of(e)}); "
                              "try again later") from None
    if not os.path.isdir(folder) or not any(f.endswith(".safetensors") for f in os.listdir(folder)):
        raise FileNotFoundError(f"{argument}={name!r}: {rid} has no .safetensors weights (gpt2_simple reads no "
                                "pickled pytorch_model.bin); pick a repository that has model.safetensors")
    return folder


def status_of(error):
    response = getattr(error, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(error).__name__


def hub_client():
    try:
        import huggingface_hub
    except ImportError:
        raise ModuleNotFoundError(f"the Hugging Face Hub needs huggingface_hub; install it with: {INSTALL}") from None
    return huggingface_hub
