"""Training controls: learning-rate schedules, AdamW weight decay, gradient clipping, early stopping
with the best checkpoint, and an exact resume with all of them (and documents mode) on."""
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import runs
from adam_bound import adam_divergence_bound
from runs import TESTS, snapshot, subprocess_env, write_text

import gpt2_simple as gpt2
from gpt2_simple import cli
from gpt2_simple.training import train as train_module
from gpt2_simple.training.optimizer import SGD, Adam, make_optimizer
from gpt2_simple.training.schedule import Schedule

FAST = dict(runs.FAST, accumulate_gradients=1)


def _events(run_dir):
    """{tag: {step: value}} over every events file of the run."""
    values = {}
    for name in sorted(os.listdir(run_dir)):
        if name.startswith("events.out.tfevents."):
            for record in tf.data.TFRecordDataset(os.path.join(run_dir, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    values.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return values


# ---------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedule_values_equal_the_closed_forms(kind):
    lr, low, w, last = 1e-3, 1e-5, 10, 110
    schedule = Schedule(lr, kind, warmup_steps=w, min_learning_rate=low, last_step=last)
    for t in (1, 5, 10):
        assert schedule(t) == pytest.approx(lr * t / w, rel=1e-12)
    for t in (11, 35, 60, 90, 110):
        if kind == "constant":
            expected = lr
        elif kind == "linear":
            expected = low + (lr - low) * (last - t) / (last - w)
        else:
            expected = low + (lr - low) * (1 + math.cos(math.pi * (t - w) / (last - w))) / 2
        assert schedule(t) == pytest.approx(expected, rel=1e-12)
    assert Schedule(lr, "cosine", 0, low, last)(last) == pytest.approx(low)
    assert Schedule(lr)(7) == lr and not Schedule(lr).varies


# ---------------------------------------------------------------------------------------------
# AdamW and clipping


def _variables():
    rng = np.random.default_rng(0)
    shapes = {"model/h0/mlp/c_fc/w": (3, 4), "model/h0/mlp/c_fc/b": (4,), "model/h0/ln_1/g": (3,), "model/wte": (5, 3)}
    return {n: tf.Variable(rng.normal(size=s).astype(np.float32)) for n, s in shapes.items()}


def test_adamw_first_three_updates_equal_a_numpy_reference():
    variables = _variables()
    start = {n: v.numpy().astype(np.float64) for n, v in variables.items()}
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    opt = Adam(variables, lr, weight_decay=wd)
    rng = np.random.default_rng(1)
    grads = [{n: rng.normal(size=v.shape).astype(np.float32) for n, v in variables.items()} for _ in range(3)]
    w = dict(start)
    m = {n: 0.0 for n in w}
    v = {n: 0.0 for n in w}
    for t, g in enumerate(grads, 1):
        opt.apply([tf.constant(g[n]) for n in variables])
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)  # TF1 Adam's bias-corrected step
        for n in w:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n].astype(np.float64) ** 2
            decay = lr * wd * w[n] if n == "model/h0/mlp/c_fc/w" else 0.0  # matrices only; not b, g, wte
            w[n] = w[n] - decay - step * m[n] / (np.sqrt(v[n]) + eps)
        for n, var in variables.items():
            np.testing.assert_allclose(var.numpy(), w[n], rtol=2e-6, atol=2e-7, err_msg=f"{n} after update {t}")


@pytest.mark.parametrize("name", ["sgd", "adafactor"])
def test_weight_decay_shrinks_only_weight_matrices(name):
    variables = _variables()
    start = {n: v.numpy() for n, v in variables.items()}
    opt = make_optimizer(name, variables, 0.1, weight_decay=0.5)
    for _ in range(3):
        opt.apply([tf.zeros_like(v) for v in variables.values()])  # no gradient: decay alone
    for n, var in variables.items():
        factor = (1 - 0.1 * 0.5) ** 3 if n == "model/h0/mlp/c_fc/w" else 1.0
        np.testing.assert_allclose(var.numpy(), start[n] * factor, rtol=1e-6, err_msg=n)


def test_clipping_bounds_the_global_norm():
    variables = _variables()
    grads = [tf.fill(v.shape, 1.0) for v in variables.values()]
    norm = float(tf.linalg.global_norm(grads))  # sqrt(12 + 4 + 3 + 15)
    assert norm == pytest.approx(math.sqrt(34), rel=1e-6)
    for max_norm, expected in ((1.0, 1.0), (100.0, norm)):
        before = {n: v.numpy() for n, v in variables.items()}
        opt = SGD(variables, 1.0, max_grad_norm=max_norm)
        opt.apply(grads)
        moved = math.sqrt(sum(float(np.sum((before[n] - v.numpy()) ** 2)) for n, v in variables.items()))
        assert moved == pytest.approx(expected, rel=1e-5)  # SGD with rate 1 moves by the clipped gradient
        assert float(opt.grad_norm.numpy()) == pytest.approx(norm, rel=1e-6)  # logged before clipping


@pytest.mark.slow
def test_clipping_in_the_compiled_step_uses_the_accumulated_gradient(real_vocab_dir, tmp_path, tiny_hparams):
    from gpt2_simple.model.hparams import HParams
    from gpt2_simple.model.model import GPT2
    from gpt2_simple.training.step import compile_train_step, lm_loss

    model = GPT2(HParams(**tiny_hparams), seed=0)
    names = sorted(model.weights)
    batches = tf.constant(np.random.default_rng(0).integers(0, 97, size=(2, 2, 8)), tf.int32)
    with tf.GradientTape() as tape:
        loss = (lm_loss(model, batches[0]) + lm_loss(model, batches[1])) / 2
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, [model.weights[n] for n in names])]  # wte's: dense
    norm = float(tf.linalg.global_norm(grads))
    before = {n: model.weights[n].numpy() for n in names}
    opt = make_optimizer("sgd", {n: model.weights[n] for n in names}, 1.0, max_grad_norm=norm / 4)
    compile_train_step(model, opt, names, strategy=tf.distribute.get_strategy())(batches)
    assert float(opt.grad_norm.numpy()) == pytest.approx(norm, rel=1e-4)
    moved = math.sqrt(sum(float(np.sum((before[n] - model.weights[n].numpy()) ** 2)) for n in names))
    assert moved == pytest.approx(norm / 4, rel=1e-4)


def _must_compile(concrete):
    """Whether some function inside a concrete function's graph is marked for XLA (`jit_compile=True`)."""
    text = str(concrete.graph.as_graph_def())  # protobuf text: nested function definitions included
    return re.search(r'key: "_XlaMustCompile"\s+value \{\s+b: true', text) is not None


def _xla_and_graph_runs(tiny_hparams, optimizer, learning_rate):
    """Four steps of each path from the same weights: {xla: (losses, {name: weights})}."""
    from gpt2_simple.model.hparams import HParams
    from gpt2_simple.model.model import GPT2
    from gpt2_simple.training.step import compile_train_step

    batches = tf.constant(np.random.default_rng(0).integers(0, 97, size=(2, 2, 8)), tf.int32)
    results = {}
    for xla in (False, True):
        model = GPT2(HParams(**tiny_hparams), seed=0)
        names = sorted(model.weights)
        opt = make_optimizer(optimizer, {n: model.weights[n] for n in names}, learning_rate, weight_decay=0.1,
                             max_grad_norm=0.5)
        step = compile_train_step(model, opt, names, strategy=tf.distribute.get_strategy(), xla=xla)
        assert _must_compile(step.get_concrete_function(batches)) == xla
        losses = [float(step(batches)) for _ in range(4)]
        results[xla] = losses, {n: model.weights[n].numpy() for n in names}
    return results


@pytest.mark.slow
def test_the_xla_step_equals_the_graph_step_and_is_the_default_for_real_sizes_on_a_gpu(tiny_hparams, monkeypatch):
    from gpt2_simple.model.hparams import PRESETS, HParams
    from gpt2_simple.training import step
    from gpt2_simple.training.step import use_xla

    assert not use_xla(PRESETS["124M"], recompute=False)  # this machine's CPU: TensorFlow's graph is quicker
    monkeypatch.setattr(step, "_on_gpu", lambda: True)
    assert use_xla(PRESETS["124M"], recompute=False) and use_xla(PRESETS["1558M"], recompute=False)
    assert not use_xla(PRESETS["124M"], recompute=True)  # XLA would keep what recomputation frees
    assert not use_xla(HParams(**tiny_hparams), recompute=False)
    # Under SGD (with decay and clipping) a weight moves by the learning rate times its gradient,
    # so the weights compare the two paths' gradients: equal up to summation order, which moves
    # a gradient by a few float32 ulps of the largest terms summed (3e-8 in weights, measured).
    results = _xla_and_graph_runs(tiny_hparams, "sgd", 0.5)
    assert results[True][0][3] < results[True][0][0] - 0.1  # it trains
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5)
    for name, weights in results[False][1].items():
        np.testing.assert_allclose(results[True][1][name], weights, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_the_xla_step_under_adam_stays_within_adams_largest_step(tiny_hparams):
    # Adam lifts a rounding difference in a near-zero gradient to a step of up to the learning
    # rate (adam_bound.py), so its weights are held to Adam's own step size, not float rounding.
    results = _xla_and_graph_runs(tiny_hparams, "adam", 1e-2)
    bound = adam_divergence_bound(1e-2, steps=4)
    for xla in (False, True):
        assert results[xla][0][3] < results[xla][0][0] - 0.1  # both train
    assert results[True][0][0] == pytest.approx(results[False][0][0], rel=1e-5)  # before any update
    for name, weights in results[False][1].items():
        assert np.max(np.abs(results[True][1][name] - weights)) <= bound, name


@pytest.mark.slow
def test_decay_and_clipping_on_two_replicas_equal_one_device(workdir):
    root, _, _ = workdir
    write_text(root)
    child = os.path.join(TESTS, "distributed_run.py")
    proc = subprocess.run([sys.executable, child, str(root), "mirrored_controls"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT", 1)[1])
    single, mirrored = ([r["losses"][k] for k in sorted(r["losses"], key=int)] for r in (results["single"],
                                                                                       results["mirrored"]))
    assert len(single) == 3
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)
    norms = [_events(os.path.join(root, name, "run1"))["grad_norm"] for name in ("single", "mirrored")]
    np.testing.assert_allclose([norms[1][s] for s in (1, 2, 3)], [norms[0][s] for s in (1, 2, 3)], rtol=1e-4)
    assert min(norms[0].values()) > 0.05  # clipping was active on every step
    a = gpt2.load_model(os.path.join(root, "single", "run1"))
    b = gpt2.load_model(os.path.join(root, "mirrored", "run1"))
    for name in a.weights:
        np.testing.assert_allclose(b.weights[name].numpy(), a.weights[name].numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, precision", [("adam", "float32"), ("sgd", "float32"), ("adafactor", "float32"),
                                                  ("adam", "mixed_float16"), ("adam", "mixed_bfloat16")])
def test_decay_and_clipping_train_with_every_optimizer_and_precision(workdir, optimizer, precision):
    root, model_dir, _ = workdir
    result = gpt2.finetune(gpt2.start_tf_sess(), write_text(root), steps=3, model_dir=model_dir, seed=0,
                           optimizer=optimizer, precision=precision, weight_decay=0.01, max_grad_norm=0.5,
                           learning_rate=1e-3, **FAST)
    events = _events(result.run_dir)
    assert all(np.isfinite(list(result.losses.values())))
    assert sorted(events["grad_norm"]) == [1, 2, 3] and all(0 < g < 1e6 for g in events["grad_norm"].values())


# ---------------------------------------------------------------------------------------------
# Early stopping and the best checkpoint


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(workdir, capsys):
    root, model_dir, _ = workdir
    write_text(root, "alpha beta gamma delta\n" * 4, name="train.txt")
    write_text(root, "The quick brown fox jumps over the lazy dog.\n" * 4, name="val.txt")
    result = gpt2.finetune(gpt2.start_tf_sess(), "train.txt", steps=60, model_dir=model_dir, seed=0, learning_rate=5e-2,
                           val_dataset="val.txt", val_every=2, val_batch_count=2, early_stopping_patience=3,
                           keep_best=True, **dict(FAST, print_every=100))
    out = capsys.readouterr().out
    run = root / "checkpoint" / "run1"
    val = _events(result.run_dir)["val_loss"]
    best = json.loads((run / "best.json").read_text())
    assert result.step < 60 and result.step == max(val)  # stopped early, and saved where it stopped
    assert best["step"] == min(val, key=val.get) and best["val_loss"] == pytest.approx(min(val.values()), rel=1e-6)
    after = [val[s] for s in sorted(val) if s > best["step"]]
    assert len(after) == 3 and min(after) >= best["val_loss"]  # patience: 3 validations without improvement
    assert f"Stopping early: the validation loss has not improved for 3 validations (best {best['val_loss']:.4f} " \
           f"at step {best['step']})" in out
    # The state file still names the latest, for gpt-2-simple; 'best' picks the other one.
    assert (run / "checkpoint").read_text().splitlines()[0] == f'model_checkpoint_path: "model-{result.step}"'
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), checkpoint="best")
    assert sess.model.checkpoint_path.endswith("model-best")
    latest = gpt2.load_model(str(run))
    assert not np.allclose(latest.weights["model/h0/mlp/c_fc/w"].numpy(), sess.model.weights["model/h0/mlp/c_fc/w"].numpy())
    assert cli.main(["generate", "--checkpoint", "best", "--stdout", "--length", "4", "--seed", "1"]) == 0
    assert "Loading checkpoint checkpoint/run1/model-best" in capsys.readouterr().out


@pytest.mark.slow
def test_gpt_2_simple_reads_a_documents_run_with_a_best_checkpoint(workdir):
    if importlib.util.find_spec("gpt_2_simple") is None:
        pytest.fail("gpt-2-simple is not installed: pip install --no-deps gpt-2-simple==0.8.1 toposort")
    root, model_dir, _ = workdir
    write_text(root, "red green blue\none two three\n" * 10, name="docs.txt")
    result = gpt2.finetune(gpt2.start_tf_sess(), "docs.txt", steps=4, model_dir=model_dir, seed=0, line_by_line=True,
                           val_dataset="docs.txt", val_every=2, keep_best=True, **FAST)
    code = textwrap.dedent("""
        import gpt_2_simple as g, tensorflow as tf
        sess = g.start_tf_sess()
        g.load_gpt2(sess, run_name="run1")
        print("LATEST", tf.train.latest_checkpoint("checkpoint/run1"))
        print("TEXTS", len(g.generate(sess, run_name="run1", length=5, return_as_list=True)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"LATEST checkpoint/run1/model-{result.step}" in proc.stdout and "TEXTS 1" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Exact resume with every option on


ALL_ON = dict(FAST, line_by_line=True, learning_rate=1e-2, learning_rate_schedule="cosine", warmup_steps=2,
              min_learning_rate=1e-4, weight_decay=0.1, max_grad_norm=0.5, val_dataset="val.jsonl", val_every=1,
              val_batch_count=2, keep_best=True, early_stopping_patience=10, save_every=100)


def _interrupt_after(monkeypatch, step):
    original = train_module._step

    def step_then_signal(trainer, *args):
        loss = original(trainer, *args)
        if trainer.counter == step:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: save at the end of this step and stop
        return loss

    monkeypatch.setattr(train_module, "_step", step_then_signal)


@pytest.mark.slow
def test_resume_mid_run_reproduces_the_uninterrupted_run_with_every_option_on(workdir, monkeypatch):
    root, model_dir, _ = workdir
    write_text(root, "".join(json.dumps({"text": t}) + "\n" for t in ["red green blue", "one two three four"] * 8),
               name="train.jsonl")
    write_text(root, json.dumps({"text": "one two red"}) + "\n" + json.dumps({"text": "blue green"}) + "\n",
               name="val.jsonl")
    whole = gpt2.finetune(gpt2.start_tf_sess(), "train.jsonl", steps=6, model_dir=model_dir, run_name="whole", seed=4,
                          **ALL_ON)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 3)
        first = gpt2.finetune(gpt2.start_tf_sess(), "train.jsonl", steps=6, model_dir=model_dir, run_name="split",
                              seed=4, **ALL_ON)
    assert sorted(first.losses) == [1, 2, 3] and first.step == 3
    second = gpt2.finetune(gpt2.start_tf_sess(), "train.jsonl", steps=3, model_dir=model_dir, run_name="split",
                           **ALL_ON)
    resumed = {**first.losses, **second.losses}
    np.testing.assert_allclose([resumed[s] for s in range(1, 7)], [whole.losses[s] for s in range(1, 7)], rtol=1e-6)
    a, b = _events(whole.run_dir), _events(second.run_dir)
    schedule = Schedule(1e-2, "cosine", 2, 1e-4, last_step=6)
    for events in (a, b):
        np.testing.assert_allclose([events["learning_rate"][s] for s in range(1, 7)],
                                   [schedule(s) for s in range(1, 7)], rtol=1e-6)
    np.testing.assert_allclose([b["val_loss"][s] for s in range(7)], [a["val_loss"][s] for s in range(7)], rtol=1e-6)
    np.testing.assert_allclose([b["grad_norm"][s] for s in range(1, 7)], [a["grad_norm"][s] for s in range(1, 7)],
                               rtol=1e-5)
    best_a, best_b = (json.loads((root / "checkpoint" / r / "best.json").read_text()) for r in ("whole", "split"))
    assert best_a["step"] == best_b["step"] and best_a["val_loss"] == pytest.approx(best_b["val_loss"], rel=1e-6)
    tokens = np.array([[50256, 445, 4077]])
    for checkpoint in ("latest", "best"):
        np.testing.assert_allclose(gpt2.load_model(whole.run_dir, checkpoint)(tokens).numpy(),
                                   gpt2.load_model(second.run_dir, checkpoint)(tokens).numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input


BAD = {
    "warmup longer than the run": (dict(steps=5, warmup_steps=10), "warmup_steps=10 is more than steps=5"),
    "negative weight decay": (dict(weight_decay=-0.1), "weight_decay=-0.1 must be >= 0"),
    "zero max_grad_norm": (dict(max_grad_norm=0.0), "max_grad_norm=0.0 must be > 0"),
    "negative max_grad_norm": (dict(max_grad_norm=-1.0), "max_grad_norm=-1.0 must be > 0"),
    "unknown schedule": (dict(learning_rate_schedule="step"), "learning_rate_schedule='step' is not supported"),
    "schedule without a step count": (dict(steps=-1, learning_rate_schedule="linear"), "pass steps=N"),
    "min_learning_rate above learning_rate": (dict(min_learning_rate=1.0), "min_learning_rate=1.0 must be in"),
    "keep_best without val_dataset": (dict(keep_best=True), "keep_best=True needs val_dataset="),
    "patience without val_dataset": (dict(early_stopping_patience=3), "early_stopping_patience=3 needs val_dataset="),
    "zero patience": (dict(early_stopping_patience=0, val_dataset="d.txt"), "early_stopping_patience=0 must be"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_controls_are_one_line_and_change_nothing(workdir, case):
    root, model_dir, _ = workdir
    data = write_text(root, name="d.txt")
    options, fragment = BAD[case]
    before = snapshot(root)
    with pytest.raises(ValueError) as info:
        gpt2.finetune(gpt2.start_tf_sess(), data, **dict(dict(FAST, steps=5, model_dir=model_dir), **options))
    message = str(info.value)
    assert fragment in message and "\n" not in message, message
    assert snapshot(root) == before


def test_cli_flags_reach_finetune_with_their_types(monkeypatch):
    seen = {}
    monkeypatch.setattr(gpt2, "start_tf_sess", lambda: None)
    monkeypatch.setattr(gpt2, "is_gpt2_downloaded", lambda *a: True)
    original = gpt2.finetune

    def record(sess, dataset, **kwargs):
        seen.update(kwargs, dataset=dataset)

    record.__signature__ = __import__("inspect").signature(original)
    record.__doc__ = original.__doc__
    monkeypatch.setattr(gpt2, "finetune", record)
    assert cli.main(["finetune", "tweets.jsonl", "--line_by_line", "--text_field", "body", "--learning_rate_schedule",
                     "cosine", "--warmup_steps", "10", "--max_grad_norm", "1.5", "--weight_decay", "0.01",
                     "--early_stopping_patience", "3", "--keep_best", "--val_dataset", "v.jsonl"]) == 0
    assert seen["dataset"] == "tweets.jsonl" and seen["line_by_line"] is True and seen["text_field"] == "body"
    assert (seen["warmup_steps"], seen["max_grad_norm"], seen["weight_decay"]) == (10, 1.5, 0.01)
    assert seen["early_stopping_patience"] == 3 and seen["keep_best"] is True
    assert seen["learning_rate_schedule"] == "cosine" and seen["min_learning_rate"] == 0.0
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    assert "--line_by_line" in help_text and "one document" in help_text
    assert "gpt2_simple finetune tweets.jsonl --line_by_line" in " ".join(help_text.split())
