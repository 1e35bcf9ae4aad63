"""Every bad input a user can give, as one table: one clear exception, a message that names the
input and the fix, and nothing on disk changed."""
import json
import os
import shutil

import numpy as np
import pytest
import runs
from runs import snapshot, trained_run

import gpt2_simple as gpt2

pytestmark = pytest.mark.slow  # all of this file: `pytest -m "not slow"` skips it

FAST = dict(runs.FAST, batch_size=1, accumulate_gradients=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory, real_vocab_dir):
    with trained_run(tmp_path_factory.mktemp("bad"), real_vocab_dir, steps=1, run_name="keep", seed=0, **FAST) as run:
        yield run


def _broken_model(world, name, edit):
    """A copy of the tiny model folder, changed by `edit(folder)`; returns its name."""
    folder = os.path.join(world["model_dir"], name)
    if not os.path.exists(folder):
        shutil.copytree(os.path.join(world["model_dir"], "tiny"), folder)
        edit(folder)
    return name


def _file(world, name, content):
    path = os.path.join(world["root"], name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _npz_with_objects(world):
    path = os.path.join(world["root"], "objects.npz")
    np.savez(path, arr_0=np.array([{"a": 1}], dtype=object))
    return path


def _finetune(world, **kwargs):
    options = dict(FAST, model_dir=world["model_dir"], steps=1, run_name="new")
    options.update(kwargs)
    dataset = options.pop("dataset", world["data"])
    return lambda: gpt2.finetune(gpt2.start_tf_sess(), dataset, **options)


def _generate(world, **kwargs):
    return lambda: gpt2.generate(world["sess"], return_as_list=True, **kwargs)


def _truncate(folder):
    data = os.path.join(folder, "model.ckpt.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 3)


def _write(folder, name, text):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


CASES = {
    "empty dataset": (lambda w: _finetune(w, dataset=_file(w, "empty.txt", b"")), ValueError, "has no tokens"),
    "binary dataset": (lambda w: _finetune(w, dataset=_file(w, "blob.txt", b"\x00\x01\x02" * 100)), ValueError,
                       "is not a text file"),
    "missing dataset": (lambda w: _finetune(w, dataset="no_such_file.txt"), FileNotFoundError,
                        "'no_such_file.txt' names no files"),
    "npz of Python objects": (lambda w: _finetune(w, dataset=_npz_with_objects(w)), ValueError,
                              "holds Python objects"),
    "csv without text in its first column": (
        lambda w: _finetune(w, dataset=_file(w, "empty.csv", b"text,label\n,1\n,2\n")), ValueError,
        "has no text in its first column"),
    "missing base model": (lambda w: _finetune(w, model_name="absent"), FileNotFoundError,
                           "base model folder"),
    "unknown model to download": (lambda w: lambda: gpt2.download_gpt2(model_dir=w["model_dir"], model_name="99M"),
                                  ValueError, "'99M'"),
    "run_name with a separator": (lambda w: _finetune(w, run_name="a/b"), ValueError,
                                  "run_name='a/b' must be a plain folder name"),
    "run_name of ..": (lambda w: _finetune(w, run_name=".."), ValueError, "run_name='..'"),
    "model_name with ..": (lambda w: lambda: gpt2.load_gpt2(gpt2.start_tf_sess(), model_name="../models"),
                           ValueError, "model_name='../models' must be a plain folder name"),
    "hparams.json missing": (
        lambda w: _finetune(w, model_name=_broken_model(w, "nohp", lambda f: os.remove(os.path.join(f, "hparams.json")))),
        FileNotFoundError, "hparams.json not found"),
    "hparams.json malformed": (
        lambda w: _finetune(w, model_name=_broken_model(w, "badhp", lambda f: _write(f, "hparams.json", "{oops"))),
        ValueError, "hparams.json is not valid JSON"),
    "hparams.json disagrees with the checkpoint": (
        lambda w: _finetune(w, model_name=_broken_model(w, "widehp", lambda f: _write(f, "hparams.json", json.dumps(
            {"n_vocab": 50257, "n_ctx": 32, "n_embd": 32, "n_head": 2, "n_layer": 2})))),
        ValueError, "does not belong to this checkpoint"),
    "truncated checkpoint data": (
        lambda w: _finetune(w, model_name=_broken_model(w, "cut", _truncate)), ValueError, "truncated or corrupt"),
    "steps=0": (lambda w: _finetune(w, steps=0), ValueError, "steps=0 must be a positive number"),
    "steps=-2": (lambda w: _finetune(w, steps=-2), ValueError, "steps=-2 must be a positive number"),
    "finetune batch_size=0": (lambda w: _finetune(w, batch_size=0), ValueError, "batch_size=0"),
    "nsamples not divisible by batch_size": (lambda w: _generate(w, nsamples=5, batch_size=2), ValueError,
                                             "nsamples=5 is not divisible by batch_size=2"),
    "generate batch_size=0": (lambda w: _generate(w, batch_size=0), ValueError, "batch_size=0"),
    "temperature=0": (lambda w: _generate(w, temperature=0), ValueError, "temperature=0 must be > 0"),
    "temperature<0": (lambda w: _generate(w, temperature=-1.0), ValueError, "temperature=-1.0 must be > 0"),
    "top_k<0": (lambda w: _generate(w, top_k=-5), ValueError, "top_k=-5"),
    "top_p>1": (lambda w: _generate(w, top_p=1.01), ValueError, "top_p=1.01 must be in [0, 1]"),
    "top_p<0": (lambda w: _generate(w, top_p=-0.1), ValueError, "top_p=-0.1 must be in [0, 1]"),
    "prefix longer than the context": (lambda w: _generate(w, prefix="many words " * 30), ValueError,
                                       "shorten the prefix"),
    "length=0": (lambda w: _generate(w, length=0), ValueError, "length=0"),
    "length<0": (lambda w: _generate(w, length=-3), ValueError, "length=-3"),
    "checkpoint that does not exist": (
        lambda w: lambda: gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="keep", checkpoint="model-999"),
        FileNotFoundError, "checkpoint='model-999' not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_error_and_changes_nothing(world, case):
    make_call, error, fragment = CASES[case]
    call = make_call(world)
    before = snapshot(world["root"])
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message and len(message) < 400, message
    assert snapshot(world["root"]) == before


def test_invalid_utf8_is_replaced_with_a_warning(world):
    path = _file(world, "latin1.txt", "caf\xe9 au lait, " .encode("latin-1") * 20)
    with pytest.warns(UnicodeWarning, match="latin1.txt: 20 invalid UTF-8 byte"):
        result = gpt2.finetune(gpt2.start_tf_sess(), path, steps=1, model_dir=world["model_dir"], run_name="latin",
                               **FAST)
    assert sorted(result.losses) == [1]


def test_latest_without_a_run_starts_fresh_and_says_so(world, capsys):
    gpt2.finetune(gpt2.start_tf_sess(), world["data"], steps=1, model_dir=world["model_dir"], run_name="brand_new",
                  **FAST)
    assert "No checkpoint in checkpoint/brand_new yet: starting from the base model" in capsys.readouterr().out
