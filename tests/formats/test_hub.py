"""The Hugging Face Hub both ways: a GPT-2 pulled by its id (through the real huggingface_hub client and its
cache, against a local stand-in of the Hub's download routes, then offline), and a run pushed."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hub_standin import hub_standin
from runs import TESTS, snapshot, subprocess_env, write_text

import gpt2_simple as gpt2
from gpt2_simple.cli import main as cli_main
from gpt2_simple.formats import hub

REPO = "test-org/tiny6"


@pytest.fixture(scope="module")
def sharded_repo(tmp_path_factory, real_vocab_dir):
    """A random 6-layer GPT-2 (width 64, 128 positions) saved by transformers as 3 shards with their index, the
    vocabulary beside; returns (folder, its logits of `hub_pull_run.TOKENS` in transformers)."""
    import torch
    from hub_pull_run import TOKENS
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("hub") / "repo"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)).eval()
    model.save_pretrained(folder, max_shard_size="800KB")
    shutil.copy(os.path.join(real_vocab_dir, "encoder.json"), folder / "vocab.json")
    shutil.copy(os.path.join(real_vocab_dir, "vocab.bpe"), folder / "merges.txt")
    assert sorted(f.name for f in folder.glob("model-*.safetensors")) == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    with torch.no_grad():
        logits = model(torch.tensor(TOKENS)).logits.numpy()
    return str(folder), logits


def _child(root, mode, **env):
    environment = {k: v for k, v in subprocess_env(HF_HOME=str(root / "hf_home"), **env).items()
                   if k not in ("HF_HUB_OFFLINE", "HF_TOKEN") or k in env}  # only what this test sets
    result = subprocess.run([sys.executable, os.path.join(TESTS, "hub_pull_run.py"), str(root), mode],
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(root / f"{mode}.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_a_sharded_model_pulled_by_id_then_offline_matches_transformers_fine_tunes_and_exports(
        sharded_repo, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, reference = sharded_repo
    write_text(tmp_path, "The quick brown fox jumps over the lazy dog. " * 30)
    with hub_standin({REPO: folder}) as (endpoint, asked):
        online = _child(tmp_path, "online", HF_ENDPOINT=endpoint)
    assert ("GET", f"/api/models/{REPO}/revision/main") in asked  # the real client, its own routes
    np.testing.assert_allclose(online["logits"], reference, atol=1e-4, rtol=0)
    assert online["unknown"][0] == "FileNotFoundError" and "test-org/nope" in online["unknown"][1]

    # The stand-in is gone: everything below comes from the cache the pull filled.
    offline = _child(tmp_path, "offline", HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    np.testing.assert_allclose(offline["logits"], reference, atol=1e-4, rtol=0)
    assert offline["unknown"][0] == "ConnectionError" and "HF_HUB_OFFLINE" in offline["unknown"][1]
    assert hub.repo_id_of(offline["loaded_from"]) == REPO and offline["generated"].startswith("The quick")
    assert offline["resumed"] == {k: offline["straight"][k] for k in ("3", "4")}  # exact resume
    assert offline["straight"]["4"] < offline["straight"]["1"]
    exported = str(tmp_path / "exported")
    import torch
    from hub_pull_run import TOKENS

    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(exported).eval()(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(theirs, np.load(tmp_path / "offline-run.npy"), atol=1e-4, rtol=0)
    card = open(os.path.join(exported, "README.md"), encoding="utf-8").read()
    assert f'base_model: "{REPO}"' in card and "base_model_relation: \"finetune\"" in card
    training = json.load(open(tmp_path / "checkpoint" / "straight" / "training.json"))
    assert hub.repo_id_of(training["base_model"]) == REPO


@pytest.mark.parametrize("name", ["hf://", "hf://org", "hf://org/na me", "hf://../x"])
def test_a_malformed_hub_id_is_one_line_naming_the_argument(name):
    with pytest.raises(ValueError, match=r"model_name=.*hf://ORG/NAME"):
        gpt2.finetune(gpt2.start_tf_sess(), "data.txt", model_name=name)


# ---------------------------------------------------------------------------------------------
# Push: the Hub's upload side cannot run here, so create_repo and upload_folder are replaced by
# stand-ins that record their calls and copy the staged folder. This is the one stand-in of the Hub.


@pytest.fixture
def uploads(monkeypatch):
    """Replace HfApi.create_repo/upload_folder; returns the list of calls with a copy of each uploaded folder."""
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = os.path.join(os.path.dirname(folder_path) + "-uploaded")
        shutil.copytree(folder_path, copy)
        calls.append(("upload_folder", repo_id, dict(kwargs, folder=copy)))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, real_vocab_dir):
    from runs import trained_run

    with trained_run(tmp_path_factory.mktemp("push"), real_vocab_dir, steps=2, model_name="tiny", batch_size=2,
                     accumulate_gradients=1, sample_every=0, save_every=0) as run:
        yield os.path.join(str(run["root"]), "checkpoint", "run1")


def test_push_stages_a_complete_repository_and_uploads_it(small_run, uploads, capsys):
    before = snapshot(small_run)
    code = cli_main(["push", small_run, "me/my-gpt2", "--private", "--gguf", "q8_0"])
    assert code == 0 and "https://huggingface.co/me/my-gpt2" in capsys.readouterr().out
    (kind, rid, created), (_, uploaded_to, upload) = uploads
    assert (kind, rid, created["private"], uploaded_to) == ("create_repo", "me/my-gpt2", True, "me/my-gpt2")
    assert sorted(os.listdir(upload["folder"])) == [
        "README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
        "my-gpt2-q8_0.gguf", "tokenizer_config.json", "vocab.json"]
    assert snapshot(small_run) == before  # the run folder is only read


def _raising(error):
    def upload_folder(self, **kwargs):
        raise error

    return upload_folder


def _http_error(status):
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    return errors.HfHubHTTPError("refused", response=response)


@pytest.mark.parametrize("error, kind, words", [
    ("token", PermissionError, "hf auth login"),
    (403, PermissionError, "pick another ORG/NAME"),
    ("network", ConnectionError, "check the connection"),
])
def test_push_failures_are_one_line_naming_the_fix_and_leave_the_run_alone(small_run, uploads, monkeypatch, error,
                                                                          kind, words):
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    raised = {"token": errors.LocalTokenNotFoundError("no token"),
              "network": httpx2.ConnectError("Connection refused")}.get(error) or _http_error(error)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", _raising(raised))
    before = snapshot(small_run)
    with pytest.raises(kind) as caught:
        gpt2.push_to_hub(small_run, "me/taken")
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(small_run) == before
