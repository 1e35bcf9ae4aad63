"""Fine-tuning: loss falls, exact resume, run folder contents, printed lines, small datasets."""
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import runs
from runs import subprocess_env, write_text

import gpt2_simple as gpt2

FAST = dict(runs.FAST, learning_rate=3e-3)


@pytest.mark.slow
def test_loss_at_least_halves_on_repeated_text(workdir):
    root, model_dir, _ = workdir
    sess = gpt2.start_tf_sess()
    result = gpt2.finetune(sess, write_text(root), steps=40, model_dir=model_dir, seed=0, **dict(FAST, learning_rate=2e-2))
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 40 and result.step == 40
    assert np.mean(losses[-5:]) <= 0.5 * losses[0], losses


@pytest.mark.slow
def test_run_folder_contents_and_printed_lines(workdir, capsys):
    root, model_dir, _ = workdir
    sess = gpt2.start_tf_sess()
    opts = dict(FAST, sample_every=2, sample_length=8, sample_num=2, save_every=2, max_checkpoints=2)
    gpt2.finetune(sess, write_text(root), steps=4, model_dir=model_dir, seed=0, **opts)
    out = capsys.readouterr().out
    run = root / "checkpoint" / "run1"
    files = sorted(os.listdir(run))
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1
    assert sorted(set(files) - set(events)) == sorted([
        "checkpoint", "counter", "encoder.json", "hparams.json", "training.json", "vocab.bpe",
        "model-2.index", "model-2.data-00000-of-00001", "optimizer-2.index", "optimizer-2.data-00000-of-00001",
        "model-4.index", "model-4.data-00000-of-00001", "optimizer-4.index", "optimizer-4.data-00000-of-00001",
    ])
    assert (run / "counter").read_text() == "4\n"
    assert (run / "encoder.json").read_bytes() == (root / "models" / "tiny" / "encoder.json").read_bytes()
    assert "Loading checkpoint " + os.path.join(model_dir, "tiny", "model.ckpt") in out
    assert "No checkpoint in checkpoint/run1 yet: starting from the base model" in out
    assert re.search(r"^dataset has \d+ tokens$", out, re.M)
    assert len(re.findall(r"^\[\d+ \| \d+\.\d\d\] loss=\d+\.\d\d avg=\d+\.\d\d$", out, re.M)) == 4
    assert "Saving " + os.path.join("checkpoint", "run1", "model-2") in out
    assert "Saving " + os.path.join("checkpoint", "run1", "model-4") in out
    samples = (root / "samples" / "run1" / "samples-3").read_text(encoding="utf-8")
    assert samples.startswith("======== SAMPLE 1 ========\n") and "======== SAMPLE 2 ========\n" in samples
    assert "======== SAMPLE 2 ========" in out
    # The run loads with the standard loader and generates.
    gpt2.load_gpt2(sess, run_name="run1")
    assert len(gpt2.generate(sess, length=5, return_as_list=True, seed=1)) == 1


@pytest.mark.slow
def test_resume_equals_uninterrupted(workdir):
    root, model_dir, _ = workdir
    data = write_text(root)
    whole = gpt2.finetune(gpt2.start_tf_sess(), data, steps=6, model_dir=model_dir, run_name="whole", seed=5, **FAST)
    first = gpt2.finetune(gpt2.start_tf_sess(), data, steps=3, model_dir=model_dir, run_name="split", seed=5, **FAST)
    # The second call needs neither the seed nor the base model: the run folder carries both.
    os.rename(os.path.join(model_dir, "tiny"), os.path.join(model_dir, "moved"))
    second = gpt2.finetune(gpt2.start_tf_sess(), data, steps=3, model_dir=model_dir, run_name="split", **FAST)
    assert sorted(first.losses) == [1, 2, 3] and sorted(second.losses) == [4, 5, 6]
    resumed = {**first.losses, **second.losses}
    np.testing.assert_allclose([resumed[s] for s in range(1, 7)], [whole.losses[s] for s in range(1, 7)], rtol=1e-6)
    a = gpt2.load_model(str(root / "checkpoint" / "whole"))
    b = gpt2.load_model(str(root / "checkpoint" / "split"))
    tokens = np.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(a(tokens).numpy(), b(tokens).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fresh_restarts_counter_and_fine_tuning_twice_in_one_process(workdir):
    root, model_dir, _ = workdir
    data = write_text(root)
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, data, steps=2, model_dir=model_dir, run_name="a", seed=1, **FAST)
    again = gpt2.finetune(sess, data, steps=2, model_dir=model_dir, run_name="a", **FAST)
    assert sorted(again.losses) == [3, 4]
    other = gpt2.finetune(sess, data, steps=2, model_dir=model_dir, run_name="b", seed=1, **FAST)
    assert sorted(other.losses) == [1, 2]
    fresh = gpt2.finetune(sess, data, steps=1, model_dir=model_dir, run_name="a", restore_from="fresh", **FAST)
    assert sorted(fresh.losses) == [1]
    from_path = gpt2.finetune(sess, data, steps=1, model_dir=model_dir, run_name="c",
                              restore_from=str(root / "checkpoint" / "b"), **FAST)
    assert sorted(from_path.losses) == [1]


def test_dataset_shorter_than_the_context_trains(workdir, capsys):
    root, model_dir, _ = workdir
    data = write_text(root, "Tiny dataset here.")
    result = gpt2.finetune(gpt2.start_tf_sess(), data, steps=3, model_dir=model_dir, seed=0, **FAST)
    assert sorted(result.losses) == [1, 2, 3]
    # The text and the <|endoftext|> joined after it (7 tokens) make one 11-token chunk.
    assert "shorter than the context (32): training on 11-token windows" in capsys.readouterr().out


@pytest.mark.slow
def test_overwrite_keeps_only_the_restored_checkpoint(workdir):
    root, model_dir, _ = workdir
    data = write_text(root)
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, model_dir=model_dir, save_every=1, max_checkpoints=5,
                  seed=0, **FAST)
    run = root / "checkpoint" / "run1"
    assert {f for f in os.listdir(run) if f.endswith(".index")} == {
        "model-1.index", "model-2.index", "optimizer-1.index", "optimizer-2.index"}
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, model_dir=model_dir, overwrite=True, max_checkpoints=5, **FAST)
    assert {f for f in os.listdir(run) if f.endswith(".index")} == {
        "model-2.index", "model-3.index", "optimizer-2.index", "optimizer-3.index"}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_run_and_returns(workdir, signum):
    root, model_dir, _ = workdir
    data = write_text(root)
    script = textwrap.dedent(f"""
        import gpt2_simple as gpt2
        result = gpt2.finetune(gpt2.start_tf_sess(), {data!r}, steps=-1, model_dir={model_dir!r}, seed=0,
                               model_name="tiny", batch_size=1, accumulate_gradients=1, sample_every=0)
        print("returned at step", result.step, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True,
                            env=subprocess_env(PYTHONUNBUFFERED="1"))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[3 |"):
            proc.send_signal(signum)
            break
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    step = int(re.search(r"returned at step (\d+)", out).group(1))
    assert step >= 3 and "interrupted" in out and f"Saving checkpoint/run1/model-{step}" in out
    assert (root / "checkpoint" / "run1" / "counter").read_text() == f"{step}\n"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps=0 must be a positive number of steps, or -1"),
        (dict(steps=-2), "steps=-2"),
        (dict(batch_size=0), "batch_size=0 must be a positive integer"),
        (dict(optimizer="rmsprop"), "optimizer='rmsprop' is not supported"),
        (dict(run_name="../escape"), "run_name='../escape' must be a plain folder name"),
        (dict(model_name="a/b"), "model_name='a/b' must be a plain folder name"),
        (dict(model_name="missing"), "base model folder"),
        (dict(restore_from="no/such/run"), "restore_from='no/such/run' is neither"),
    ],
)
def test_bad_options_are_one_line_errors(workdir, kwargs, message):
    root, model_dir, _ = workdir
    options = dict(FAST, model_dir=model_dir, steps=1)
    options.update(kwargs)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        gpt2.finetune(gpt2.start_tf_sess(), write_text(root), **options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (root / "checkpoint").exists()


@pytest.mark.slow
def test_fresh_into_a_used_run_folder_never_deletes_the_earlier_runs_checkpoints(workdir):
    root, model_dir, _ = workdir
    data = write_text(root)
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=3, model_dir=model_dir, seed=0, **FAST)
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, model_dir=model_dir, restore_from="fresh", **FAST)
    run = root / "checkpoint" / "run1"
    assert {f for f in os.listdir(run) if f.endswith(".index")} == {
        "model-1.index", "model-3.index", "optimizer-1.index", "optimizer-3.index"}
    assert os.path.basename(gpt2.load_model(str(run)).checkpoint_path) == "model-1"


@pytest.mark.slow
def test_training_samples_do_not_change_the_training_data(workdir):
    root, model_dir, _ = workdir
    data = write_text(root)
    plain = gpt2.finetune(gpt2.start_tf_sess(), data, steps=4, model_dir=model_dir, run_name="plain", seed=2, **FAST)
    sampled = gpt2.finetune(gpt2.start_tf_sess(), data, steps=4, model_dir=model_dir, run_name="sampled", seed=2,
                            **dict(FAST, sample_every=1, sample_length=4))
    assert sampled.losses == plain.losses
    assert sorted(os.listdir(root / "samples" / "sampled")) == ["samples-2", "samples-3", "samples-4"]
