"""export_saved_model: a SavedModel that samples exactly as `Sampler` does, loaded without our code.

One tiny run with the real vocabulary is exported once; a fresh Python that cannot import
`gpt2_simple` or `encoder` loads it, calls it with many settings (through TF2's
`tf.saved_model.load` and through a TF1 session, the way TensorFlow Serving runs it) and prints
the tokens as JSON; the tests compare them with the in-process model and sampler.
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from openai_layout import make_openai_folder
from runs import TINY_REAL_VOCAB, make_tiny_model, snapshot

import gpt2_simple as gpt2
from gpt2_simple import cli
from gpt2_simple.formats.folders import load_model
from gpt2_simple.generation.sample import Sampler
from gpt2_simple.generation.saved_model import DEFAULTS, export_saved_model

PROMPT = [[464, 2068, 7586], [317, 43716, 287]]  # [2, 3], ids from the real vocabulary
SHORT_PROMPT = [[15496, 995, 11, 314, 716]]  # [1, 5]: another batch size and prompt length
LENGTH = 12

# Runs in a fresh interpreter: no repository on sys.path, and our packages blocked even when
# installed (pip install -e), so the SavedModel must be self-contained.
CHILD = r'''
import importlib.abc, json, os, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gpt2_simple", "encoder"):
            raise ModuleNotFoundError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Block())
for name in ("gpt2_simple", "encoder"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise AssertionError(f"{name} is importable in the child")

import tensorflow as tf

export_dir, length = sys.argv[1], int(sys.argv[4])
prompt, short_prompt = json.loads(sys.argv[2]), json.loads(sys.argv[3])
loaded = tf.saved_model.load(export_dir)
serving = loaded.signatures["serving_default"]
out = {"n_ctx": int(loaded.n_ctx.numpy()), "n_vocab": int(loaded.n_vocab.numpy()),
       "assets": sorted(os.listdir(os.path.join(export_dir, "assets")))}
_, inputs = serving.structured_input_signature
out["inputs"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in inputs.items()}
out["outputs"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in serving.structured_outputs.items()}

def call(tokens=prompt, length=length, temperature=1.0, top_k=0, top_p=0.0, seed=0, repetition_penalty=1.0,
         stop_tokens=None, lengths=False):
    stop_tokens = [[-1] * 16] * 8 if stop_tokens is None else stop_tokens
    result = serving(tokens=tf.constant(tokens, tf.int32), length=tf.constant(length, tf.int32),
                     temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(top_k, tf.int32),
                     top_p=tf.constant(top_p, tf.float32), seed=tf.constant(seed, tf.int64),
                     repetition_penalty=tf.constant(repetition_penalty, tf.float32),
                     stop_tokens=tf.constant(stop_tokens, tf.int32))
    if lengths:
        return result["tokens"].numpy().tolist(), result["lengths"].numpy().tolist()
    return result["tokens"].numpy().tolist()

out["greedy_seed1"] = call(top_k=1, seed=1)
out["greedy_seed2"] = call(top_k=1, seed=2)
out["seed7"], out["seed7_again"], out["seed8"] = call(seed=7), call(seed=7), call(seed=8)
out["top_k5"] = call(top_k=5, seed=3)
out["penalty"] = call(top_k=1, seed=7, repetition_penalty=100.0)
stops = [[-1] * 14 + out["seed7"][0][3:5], [-1] * 15 + out["seed7"][1][6:7]] + [[-1] * 16] * 6
out["stopped"] = call(seed=7, stop_tokens=stops, lengths=True)
out["top_p09"] = call(top_p=0.9, seed=4)
out["top_p_tiny"] = call(top_p=1e-6, seed=5)
out["top_p1_top_k1"] = call(top_p=1.0, top_k=1, seed=6)
out["short_seed9"] = call(tokens=short_prompt, length=4, temperature=0.7, seed=9)
out["defaults"] = [loaded.serve(tf.constant(prompt, tf.int32))["tokens"].numpy().tolist() for _ in range(2)]
try:
    call(length=out["n_ctx"] - len(prompt[0]) + 2)
except tf.errors.InvalidArgumentError as e:
    out["too_long"] = str(e)

# TensorFlow Serving's path: a TF1 session on the SignatureDef, only the inputs a request sends.
with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.load(sess, ["serve"], export_dir)
    sig = meta.signature_def["serving_default"]
    out["signature_defaults"] = sorted(sig.defaults)
    feed = {sig.inputs["tokens"].name: prompt, sig.inputs["length"].name: length,
            sig.inputs["temperature"].name: 1.0, sig.inputs["seed"].name: 7}
    out["session_seed7"] = sess.run(sig.outputs["tokens"].name, feed).tolist()
    out["session_defaults"] = sess.run(sig.outputs["tokens"].name, {sig.inputs["tokens"].name: prompt}).tolist()

out["our_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("gpt2_simple", "encoder"))
print(json.dumps(out))
'''


def run_child(export_dir, cwd):
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    args = [export_dir, json.dumps(PROMPT), json.dumps(SHORT_PROMPT), str(LENGTH)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def served(tmp_path_factory, real_vocab_dir):
    """(model folder, export_dir, the child's results) for a tiny model with the real vocabulary."""
    root = tmp_path_factory.mktemp("export")
    folder = os.path.join(make_tiny_model(root, real_vocab_dir), "tiny")
    export_dir = export_saved_model(folder, root / "exported" / "gpt2" / "1")
    cwd = root / "cwd"
    cwd.mkdir()
    return folder, export_dir, run_child(export_dir, str(cwd))


@pytest.fixture(scope="module")
def reference(served):
    return Sampler(load_model(served[0]))


def greedy(model, prompt, length):
    """Argmax decoding with the uncached forward pass, one full sequence per step."""
    tokens = np.asarray(prompt, np.int32)
    for _ in range(length):
        tokens = np.concatenate([tokens, np.argmax(model(tokens)[:, -1].numpy(), axis=-1)[:, None]], axis=1)
    return tokens[:, -length:].tolist()


@pytest.mark.slow
def test_signature_names_dtypes_and_shapes(served):
    _, _, out = served
    assert out["inputs"] == {
        "tokens": ["int32", [None, None]], "length": ["int32", []], "temperature": ["float32", []],
        "top_k": ["int32", []], "top_p": ["float32", []], "seed": ["int64", []],
        "repetition_penalty": ["float32", []], "stop_tokens": ["int32", [8, 16]],
    }
    assert out["outputs"] == {"tokens": ["int32", [None, None]], "lengths": ["int32", [None]]}
    assert (out["n_ctx"], out["n_vocab"]) == (TINY_REAL_VOCAB["n_ctx"], TINY_REAL_VOCAB["n_vocab"])
    assert out["signature_defaults"] == ["length", "repetition_penalty", "seed", "stop_tokens", "temperature",
                                         "top_k", "top_p"]
    assert out["our_modules"] == []


@pytest.mark.slow
def test_top_k_1_is_greedy_whatever_the_seed(served, reference):
    _, _, out = served
    expected = greedy(reference.model, PROMPT, LENGTH)
    assert out["greedy_seed1"] == out["greedy_seed2"] == expected
    assert out["top_p_tiny"] == expected  # a nucleus of one token
    assert out["top_p1_top_k1"] == expected  # top_p=1 is off, so top_k applies


@pytest.mark.slow
def test_a_seed_gives_the_samplers_tokens(served, reference):
    _, _, out = served
    assert out["seed7"] == out["seed7_again"] == reference.sample(PROMPT, LENGTH, temperature=1.0, seed=7).tolist()
    assert out["seed8"] != out["seed7"]
    assert out["top_p09"] == reference.sample(PROMPT, LENGTH, temperature=1.0, top_p=0.9, seed=4).tolist()
    assert out["short_seed9"] == reference.sample(SHORT_PROMPT, 4, temperature=0.7, seed=9).tolist()
    assert out["session_seed7"] == out["seed7"]  # TensorFlow Serving's way of running it agrees


@pytest.mark.slow
def test_repetition_penalty_and_stop_tokens_steer_the_export(served, reference):
    _, _, out = served
    penalised = reference.sample(PROMPT, LENGTH, temperature=1.0, top_k=1, seed=7, repetition_penalty=100.0)
    assert out["penalty"] == penalised.tolist()
    # Greedy under a strong penalty never picks a token of its text again.
    for prompt, row in zip(PROMPT, penalised.tolist()):
        assert len(set(prompt + row)) == len(prompt + row)
    tokens, lengths = out["stopped"]
    seed7 = np.asarray(out["seed7"])

    def first(row, seq):  # where seq first starts in row
        return next(t for t in range(len(row)) if list(row[t:t + len(seq)]) == list(seq))

    expected = [first(seed7[0], seed7[0][3:5]), first(seed7[1], seed7[1][6:7])]
    assert lengths == expected
    # Drawing ended once both rows held their stop sequence; the tokens drawn are the seed's.
    drawn = max(expected[0] + 2, expected[1] + 1)
    assert tokens == seed7[:, :drawn].tolist()


@pytest.mark.slow
def test_top_k_draws_only_among_the_k_most_likely(served, reference):
    _, _, out = served
    drawn = np.asarray(out["top_k5"])
    assert out["top_k5"] == reference.sample(PROMPT, LENGTH, temperature=1.0, top_k=5, seed=3).tolist()
    logits = reference.model(np.concatenate([PROMPT, drawn], axis=1)).numpy()[:, len(PROMPT[0]) - 1:-1]
    ranks = (logits > np.take_along_axis(logits, drawn[..., None], axis=-1)).sum(axis=-1)  # [2, LENGTH]
    assert ranks.max() < 5 and ranks.max() > 0  # sampled, not greedy


@pytest.mark.slow
def test_defaults_fill_in_missing_inputs_and_draw_fresh_seeds(served):
    _, _, out = served
    length = min(DEFAULTS["length"], TINY_REAL_VOCAB["n_ctx"] // 2)
    for tokens in out["defaults"] + [out["session_defaults"]]:
        assert np.asarray(tokens).shape == (2, length)
    assert out["defaults"][0] != out["defaults"][1]  # seed -1: a random seed per call


@pytest.mark.slow
def test_too_long_a_request_fails_with_the_limit(served):
    _, _, out = served
    assert "prompt_len + length must be at most n_ctx + 1 = 33" in out["too_long"]


@pytest.mark.slow
def test_assets_hold_the_vocabulary_and_hparams(served, real_vocab_dir):
    _, export_dir, out = served
    assert out["assets"] == ["encoder.json", "hparams.json", "vocab.bpe"]
    for name in ("encoder.json", "vocab.bpe"):
        with open(os.path.join(real_vocab_dir, name), "rb") as f:
            source = f.read()
        with open(os.path.join(export_dir, "assets", name), "rb") as f:
            assert f.read() == source, name
    with open(os.path.join(export_dir, "assets", "hparams.json")) as f:
        assert json.load(f) == TINY_REAL_VOCAB


# ---------------------------------------------------------------------------------------------
# Writing the folder


@pytest.mark.slow
def test_refuses_to_overwrite_and_replaces_only_with_overwrite(openai_folder, tmp_path):
    folder, _ = openai_folder
    out = tmp_path / "out" / "1"
    with pytest.warns(UserWarning, match="encoder.json or vocab.bpe"):
        export_saved_model(folder, out)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="already holds a SavedModel; pass overwrite=True"):
        export_saved_model(folder, out)
    assert snapshot(out) == before
    assert os.listdir(tmp_path / "out") == ["1"]  # no temporary folder left behind
    assert os.stat(out).st_mode & 0o055 == os.stat(tmp_path / "out").st_mode & 0o055  # a server may read it

    # A session holding other weights replaces it with overwrite=True.
    other = str(tmp_path / "other")
    make_openai_folder(other, gpt2.load_hparams(folder).to_dict(), seed=1)
    sess = gpt2.start_tf_sess()
    sess.set_model(load_model(other), None, other)
    with pytest.warns(UserWarning):
        export_saved_model(sess, out, overwrite=True)
    assert os.listdir(tmp_path / "out") == ["1"]
    wte = tf.saved_model.load(str(out)).model.wte.numpy()
    np.testing.assert_array_equal(wte, sess.model.wte.numpy())
    assert not np.array_equal(wte, load_model(folder).wte.numpy())


def test_never_replaces_a_folder_that_is_not_an_export(openai_folder, tmp_path):
    folder, _ = openai_folder
    target = tmp_path / "notes"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel; it is never replaced, even with overwrite=True"):
        export_saved_model(folder, target, overwrite=True)
    assert snapshot(target) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_saved_model(str(tmp_path / "missing"), tmp_path / "new")
    with pytest.raises(ValueError, match="source session holds no model; call gpt2.load_gpt2"):
        export_saved_model(gpt2.start_tf_sess(), tmp_path / "new")
    with pytest.raises(ValueError, match="checkpoint='model-5' applies to a source folder only"):
        export_saved_model(load_model(folder), tmp_path / "new", checkpoint="model-5")
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.slow
def test_cli_export(openai_folder, tmp_path, capsys):
    folder, _ = openai_folder
    out = str(tmp_path / "exported" / "1")
    args = cli.build_parser().parse_args(["export_saved_model", folder, out])
    assert (args.checkpoint, args.overwrite) == ("latest", False)  # the function's defaults
    with pytest.warns(UserWarning):
        assert cli.main(["export_saved_model", folder, out]) == 0
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))
    assert cli.main(["export_saved_model", folder, out]) == 2
    assert "already holds a SavedModel; pass --overwrite to replace it" in capsys.readouterr().err  # shell terms
    with pytest.warns(UserWarning):
        assert cli.main(["export_saved_model", folder, out, "--overwrite"]) == 0
