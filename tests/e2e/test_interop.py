"""Two-way compatibility with gpt-2-simple 0.8.1, driven in a subprocess (it switches eager mode off).

gpt-2-simple is a test extra, installed by .ci/run with `pip install --no-deps gpt-2-simple==0.8.1
toposort` (its own requirements would pull a second TensorFlow).
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from runs import TEXT, make_tiny_model, subprocess_env, write_text

import gpt2_simple as gpt2

pytestmark = pytest.mark.slow  # all of this file: `pytest -m "not slow"` skips it


@pytest.fixture(scope="module", autouse=True)
def _require_gpt_2_simple():
    if importlib.util.find_spec("gpt_2_simple") is None:
        pytest.fail("gpt-2-simple is not installed: pip install --no-deps gpt-2-simple==0.8.1 toposort")


def _run_upstream(code, cwd):
    env = subprocess_env(PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_gpt_2_simple_generates_from_our_run_folder(tmp_path, monkeypatch, real_vocab_dir):
    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, write_text(tmp_path), steps=3, model_name="tiny", model_dir=model_dir, batch_size=1,
                  accumulate_gradients=1, sample_every=0, learning_rate=1e-2, seed=0)
    prefix, length = "The quick", 12
    ours = gpt2.generate(sess, prefix=prefix, length=length, top_k=1, return_as_list=True)[0]
    out = _run_upstream(f"""
        import json, gpt_2_simple as g
        sess = g.start_tf_sess()
        g.load_gpt2(sess, run_name="run1")
        texts = g.generate(sess, run_name="run1", prefix={prefix!r}, length={length}, top_k=1, return_as_list=True)
        print("RESULT" + json.dumps(texts))
    """, tmp_path)
    theirs = json.loads(out.split("RESULT", 1)[1])
    assert theirs == [ours]
    assert ours.startswith(prefix) and len(ours) > len(prefix)


def test_gpt_2_simple_run_folder_fine_tunes_further_here(tmp_path, monkeypatch, real_vocab_dir):
    monkeypatch.chdir(tmp_path)
    # gpt-2-simple trains on 1024-token windows whatever the model, so this tiny model has n_ctx 1024.
    hparams = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 16, "n_head": 2, "n_layer": 2}
    make_tiny_model(tmp_path, real_vocab_dir, hparams=hparams)
    data = write_text(tmp_path, TEXT * 3)
    _run_upstream(f"""
        import gpt_2_simple as g
        sess = g.start_tf_sess()
        g.finetune(sess, {data!r}, steps=2, model_name="tiny", model_dir="models", run_name="theirs",
                   accumulate_gradients=1, sample_every=1000)
    """, tmp_path)
    run = tmp_path / "checkpoint" / "theirs"
    assert (run / "counter").read_text().strip() == "2" and (run / "model-2.meta").exists()
    import tensorflow as tf

    saved = tf.train.load_checkpoint(str(run / "model-2"))
    loaded = gpt2.load_model(str(run))
    np.testing.assert_array_equal(loaded.weights["model/h1/mlp/c_fc/w"].numpy()[None],
                                  saved.get_tensor("model/h1/mlp/c_fc/w"))
    # Resuming needs no base model: hide it.
    os.rename(tmp_path / "models", tmp_path / "hidden")
    result = gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="theirs", batch_size=1,
                           accumulate_gradients=1, sample_every=0, seed=0)
    assert sorted(result.losses) == [3, 4]
    assert (run / "counter").read_text() == "4\n"
    assert os.path.basename(gpt2.load_model(str(run)).checkpoint_path) == "model-4"
