"""Scale: tf.distribute data parallelism, recomputation, Adafactor, mixed precision, validation, TensorBoard."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY
from adam_bound import adam_divergence_bound
from distributed_run import FINETUNE
from runs import FAST, TESTS, free_ports, subprocess_env, write_text

import gpt2_simple as gpt2
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2
from gpt2_simple.training.optimizer import Adafactor, Adam
from gpt2_simple.training.step import LossScale, compile_train_step, lm_loss

CHILD = os.path.join(TESTS, "distributed_run.py")


def _child_result(output):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _losses(result):
    return [result["losses"][k] for k in sorted(result["losses"], key=int)]


# ---------------------------------------------------------------------------------------------
# tf.distribute


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_equals_one_device(workdir):
    root, _, _ = workdir
    proc = subprocess.run([sys.executable, CHILD, str(root), "mirrored"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _child_result(proc.stdout)
    single, mirrored = results["single"], results["mirrored"]
    assert len(_losses(single)) == 3
    np.testing.assert_allclose(_losses(mirrored), _losses(single), rtol=1e-5)
    assert mirrored["text"] == single["text"]
    assert "Training with MirroredStrategy with 2 replicas" in proc.stdout
    # The mirrored run's checkpoint is in the single-device format and holds the same weights, up
    # to what Adam makes of summation order: where a true gradient is zero (the key bias) its
    # float noise becomes a step of up to the learning rate (adam_bound.py). The decay-and-
    # clipping test compares the weights under SGD, where they are held to float rounding.
    a = gpt2.load_model(os.path.join(root, "single", "run1"))
    b = gpt2.load_model(os.path.join(root, "mirrored", "run1"))
    bound = adam_divergence_bound(FINETUNE["learning_rate"], steps=3)
    for name in a.weights:
        assert np.max(np.abs(b.weights[name].numpy() - a.weights[name].numpy())) <= bound, name


@pytest.mark.slow
def test_multi_worker_processes_finish_with_identical_weights(workdir):
    root, model_dir, _ = workdir
    ports = ",".join(map(str, free_ports(2)))
    workers = [subprocess.Popen([sys.executable, CHILD, str(root), "worker", str(i), ports], env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=600)
            assert worker.returncode == 0, err[-3000:]
            outputs.append(_child_result(out))
    finally:
        for worker in workers:
            worker.kill()
    assert outputs[0]["digest"] == outputs[1]["digest"]
    assert _losses(outputs[0]) == _losses(outputs[1])
    # Only the chief (worker 0) writes the run folder.
    assert os.path.isfile(root / "worker0" / "run1" / "model-3.index")
    assert not os.path.exists(root / "worker1")
    # Each worker took half of every global batch: the losses are one device's with the same batch.
    sess = gpt2.start_tf_sess()
    single = gpt2.finetune(sess, str(root / "data.txt"), model_dir=model_dir, checkpoint_dir="one", **FINETUNE)
    np.testing.assert_allclose(_losses(outputs[0]), [single.losses[s] for s in sorted(single.losses)], rtol=1e-5)


def test_strategy_names_are_checked(workdir):
    root, model_dir, _ = workdir
    with pytest.raises(ValueError, match=r"strategy='ring' is not supported"):
        gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=1, model_dir=model_dir, strategy="ring", **FAST)


def test_tpu_is_refused_in_one_line_naming_the_supported_choices():
    from gpt2_simple.training.distribute import resolve_strategy

    with pytest.raises(ValueError) as refused:
        resolve_strategy("tpu")
    assert str(refused.value) == (
        "strategy='tpu' is not supported: TPU runtimes are not (Colab's has no TensorFlow and TensorFlow 2.18-2.19 "
        "sees no TPU there, tensorflow/tensorflow#96203); use strategy=None (one device), one of "
        "('mirrored', 'multi_worker') or a tf.distribute.Strategy object")


# ---------------------------------------------------------------------------------------------
# Memory: recomputation and Adafactor


def _tiny_model_and_tokens(seed=0):
    model = GPT2(HParams(**TINY), seed=seed)
    tokens = np.random.default_rng(seed).integers(0, TINY["n_vocab"], size=(2, TINY["n_ctx"]), dtype=np.int32)
    return model, tf.constant(tokens)


@pytest.mark.parametrize("compiled", [False, True])
def test_recompute_gives_the_same_loss_and_gradients(compiled):
    model, tokens = _tiny_model_and_tokens()
    variables = list(model.weights.values())

    def grads(recompute):
        with tf.GradientTape() as tape:
            loss = lm_loss(model, tokens, recompute=recompute)
        return loss, tape.gradient(loss, variables)

    run = tf.function(grads) if compiled else grads
    (loss, plain), (loss_r, recomputed) = run(False), run(True)
    assert float(loss_r) == pytest.approx(float(loss), rel=1e-6)
    for v, a, b in zip(variables, plain, recomputed):
        np.testing.assert_allclose(tf.convert_to_tensor(b).numpy(), tf.convert_to_tensor(a).numpy(),
                                   rtol=1e-4, atol=1e-7, err_msg=v.name)


@pytest.mark.slow
def test_memory_saving_gradients_train_like_ordinary_ones(workdir):
    root, model_dir, _ = workdir
    runs = {}
    for flag in (False, True):
        sess = gpt2.start_tf_sess()
        result = gpt2.finetune(sess, "data.txt", steps=3, model_dir=model_dir, seed=1, run_name=f"r{flag}",
                               use_memory_saving_gradients=flag, **FAST)
        runs[flag] = [result.losses[s] for s in sorted(result.losses)]
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5)


def _numpy_adafactor(w, grads, lr, decay=0.8, eps=1e-30):
    """Adafactor without momentum, written from the paper's Algorithm 4 (factored) and 5 (vector)."""
    w = w.astype(np.float64)
    vr = vc = v = None
    for t, g in enumerate(grads, start=1):
        beta2 = 1.0 - t ** -decay
        g2 = g.astype(np.float64) ** 2 + eps
        if w.ndim == 2:
            vr = (1 - beta2) * g2.mean(axis=1) if vr is None else beta2 * vr + (1 - beta2) * g2.mean(axis=1)
            vc = (1 - beta2) * g2.mean(axis=0) if vc is None else beta2 * vc + (1 - beta2) * g2.mean(axis=0)
            v_hat = np.outer(vr, vc) / vr.mean()
        else:
            v = (1 - beta2) * g2 if v is None else beta2 * v + (1 - beta2) * g2
            v_hat = v
        u = g / np.sqrt(v_hat)
        w = w - lr * u / max(1.0, np.sqrt(np.mean(u ** 2)))
    return w


def test_adafactor_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    weights = {"m": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    grads = {n: [rng.normal(size=w.shape).astype(np.float32) * s for s in (1.0, 3.0, 0.1)] for n, w in weights.items()}
    variables = {n: tf.Variable(w) for n, w in weights.items()}
    opt = Adafactor(variables, learning_rate=0.01)
    for step in range(3):
        opt.apply([tf.constant(grads[n][step]) for n in variables])
    for name, w in weights.items():
        np.testing.assert_allclose(variables[name].numpy(), _numpy_adafactor(w, grads[name], 0.01), rtol=1e-5)
    assert sorted(opt.state()) == ["adafactor_step", "b/Adafactor_v", "m/Adafactor_vc", "m/Adafactor_vr"]


def test_adafactor_state_is_a_tiny_fraction_of_adams():
    hparams = HParams(n_vocab=50257, n_ctx=1024, n_embd=64, n_head=2, n_layer=2)
    model = GPT2(hparams, init=lambda name, shape: np.zeros(shape, np.float32))
    size = {name: sum(int(np.prod(v.shape)) for v in cls(model.weights, 1e-4).state().values())
            for name, cls in (("adam", Adam), ("adafactor", Adafactor))}
    assert size["adam"] == 2 * hparams.n_params + 2
    assert size["adafactor"] < 0.01 * size["adam"], size


@pytest.mark.slow
def test_adafactor_fine_tunes_and_resumes_exactly(workdir):
    root, model_dir, _ = workdir
    opts = dict(FAST, optimizer="adafactor", learning_rate=1e-2, seed=3, model_dir=model_dir)
    whole = gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=20, run_name="whole", **opts)
    losses = [whole.losses[s] for s in sorted(whole.losses)]
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses
    gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=10, run_name="split", **opts)
    second = gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=10, run_name="split", **opts)
    np.testing.assert_allclose([second.losses[s] for s in range(11, 21)], losses[10:], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Mixed precision


def test_bfloat16_compute_stays_close_to_float32():
    model, tokens = _tiny_model_and_tokens()
    full = float(lm_loss(model, tokens))
    low = lm_loss(model, tokens, dtype=tf.bfloat16)
    assert low.dtype == tf.float32
    assert float(low) == pytest.approx(full, rel=2e-2)
    assert all(v.dtype == tf.float32 for v in model.weights.values())


@pytest.mark.slow
def test_float16_loss_scale_skips_overflowing_steps_and_grows_back():
    model, tokens = _tiny_model_and_tokens()
    names = list(model.weights)
    before = {n: model.weights[n].numpy() for n in names}
    opt = Adam({n: model.weights[n] for n in names}, 1e-3)
    scale = LossScale(initial=2.0**127, period=2)  # loss * 2**127 overflows: the step must be skipped
    step = compile_train_step(model, opt, names, strategy=tf.distribute.get_strategy(), precision="mixed_float16",
                              loss_scale=scale)
    batches = tf.expand_dims(tokens, 0)
    assert math.isfinite(float(step(batches)))
    assert float(scale.scale) == 2.0**126 and int(scale.good_steps) == 0
    assert all(np.array_equal(model.weights[n].numpy(), before[n]) for n in names)
    assert float(opt.beta1_power) == pytest.approx(0.9)  # Adam did not count the skipped step
    scale.set_state([1024.0, 0])
    step(batches)
    assert (float(scale.scale), int(scale.good_steps)) == (1024.0, 1)
    assert not np.array_equal(model.weights["model/wte"].numpy(), before["model/wte"])
    step(batches)
    assert (float(scale.scale), int(scale.good_steps)) == (2048.0, 0)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_fine_tunes_and_saves_float32(workdir, precision):
    root, model_dir, _ = workdir
    opts = dict(FAST, learning_rate=3e-3, seed=4, model_dir=model_dir)
    full = gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=3, run_name="f32", **opts)
    mixed = gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=3, run_name="mixed", precision=precision, **opts)
    np.testing.assert_allclose([mixed.losses[s] for s in (1, 2, 3)], [full.losses[s] for s in (1, 2, 3)], rtol=2e-2)
    reader = tf.train.load_checkpoint(os.path.join(mixed.run_dir, "model-3"))
    assert set(reader.get_variable_to_dtype_map().values()) == {tf.float32}
    state = json.loads(tf.train.load_checkpoint(os.path.join(mixed.run_dir, "optimizer-3"))
                       .get_tensor("training_state").decode())
    assert ("loss_scale" in state) == (precision == "mixed_float16")


# ---------------------------------------------------------------------------------------------
# Validation and TensorBoard


def _events(run_dir):
    values = {}
    for name in os.listdir(run_dir):
        if name.startswith("events.out.tfevents."):
            for record in tf.data.TFRecordDataset(os.path.join(run_dir, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    assert value.metadata.plugin_data.plugin_name == "scalars"
                    values.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.slow
def test_validation_and_tensorboard_scalars(workdir, capsys):
    root, model_dir, _ = workdir
    write_text(root, name="val.txt")
    result = gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=4, model_dir=model_dir, seed=0, learning_rate=2e-2,
                           val_dataset="val.txt", val_every=2, val_batch_count=3, **FAST)
    out = capsys.readouterr().out
    lines = re.findall(r"^\[(\d+) \| \d+\.\d\d\] validation loss = (\d+\.\d\d) perplexity = (\d+\.\d\d)$", out, re.M)
    assert [int(step) for step, _, _ in lines] == [0, 2, 4]
    events = _events(result.run_dir)
    assert set(events) == {"loss", "avg_loss", "learning_rate", "tokens_per_sec", "val_loss", "val_perplexity"}
    assert events["loss"] == pytest.approx(result.losses, rel=1e-6)
    assert events["learning_rate"] == pytest.approx({step: 2e-2 for step in (1, 2, 3, 4)})
    assert all(v > 0 for v in events["tokens_per_sec"].values())
    val = events["val_loss"]
    assert sorted(val) == [0, 2, 4] and val[4] < val[0]  # the held-out text is the same kind of text
    for step, loss, ppl in lines:
        assert float(loss) == pytest.approx(val[int(step)], abs=0.005)
        assert events["val_perplexity"][int(step)] == pytest.approx(math.exp(val[int(step)]), rel=1e-5)


@pytest.mark.slow
def test_validation_defaults_to_every_save(workdir, capsys):
    root, model_dir, _ = workdir
    gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=4, model_dir=model_dir, seed=0, save_every=3,
                  val_dataset="data.txt", val_batch_count=1, **FAST)
    steps = re.findall(r"^\[(\d+) \| [\d.]+\] validation loss", capsys.readouterr().out, re.M)
    assert steps == ["0", "3", "4"]


def test_val_every_without_val_dataset_is_an_error(workdir):
    root, model_dir, _ = workdir
    with pytest.raises(ValueError, match=r"^val_every=5 needs val_dataset="):
        gpt2.finetune(gpt2.start_tf_sess(), "data.txt", steps=1, model_dir=model_dir, val_every=5, **FAST)
