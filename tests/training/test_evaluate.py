"""evaluate: held-out loss equals the model's own cross-entropy; a run scores its training text below its base."""
import json
import os
import math
import numpy as np
import pytest
from runs import write_text

import gpt2_simple as gpt2
from gpt2_simple import cli
from gpt2_simple.training.evaluate import cut_windows

HELDOUT = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n" * 6


@pytest.fixture(scope="module")
def trained(memorized_run):
    """The shared memorized run (conftest.py) and a held-out text."""
    root, model_dir, checkpoint_dir, data = memorized_run
    return root, model_dir, write_text(root, HELDOUT, "heldout.txt")


def _reference_loss(model, enc, text):
    """Mean next-token cross-entropy of `text` from `model(...)` logits, window by window in NumPy."""
    tokens = np.asarray(enc.encode(text), np.int32)
    n_ctx = model.hparams.n_ctx
    nats, count = 0.0, 0
    for begin in range(0, len(tokens) - 1, n_ctx - 1):
        window = tokens[begin:begin + n_ctx]
        logits = model(window[None]).numpy()[0].astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        nats -= logp[np.arange(len(window) - 1), window[1:]].sum()
        count += len(window) - 1
    return nats / count, count


@pytest.mark.slow
def test_loss_equals_the_models_cross_entropy(trained, capsys):
    root, model_dir, heldout = trained
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="run1", checkpoint_dir=str(root / "checkpoint"))
    rows = gpt2.evaluate(sess, heldout, checkpoint="session", batch_size=3)
    expected, count = _reference_loss(sess.model, sess.encoder, HELDOUT)
    assert rows[0]["tokens"] == count and count > 2 * sess.model.hparams.n_ctx  # several windows, batched
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert rows[0]["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    first = sess.encoder.decode_bytes(sess.encoder.encode(HELDOUT)[:1])  # the one token nothing predicts
    assert rows[0]["bytes"] == len(HELDOUT.encode()) - len(first)
    assert rows[0]["bits_per_byte"] == pytest.approx(expected * count / math.log(2) / rows[0]["bytes"], rel=1e-5)


@pytest.mark.slow
def test_run_scores_its_training_text_below_its_base_model(trained, capsys):
    root, model_dir, heldout = trained
    train_text = str(root / "data.txt")
    rows = gpt2.evaluate(gpt2.start_tf_sess(), train_text, checkpoint_dir=str(root / "checkpoint"))
    assert [r["model"] for r in rows] == ["base tiny", "model-30", "model-60"]
    assert [r["step"] for r in rows] == [None, 30, 60]
    assert rows[2]["loss"] < 0.5 * rows[0]["loss"], rows
    table = capsys.readouterr().out
    assert "loss/token" in table and "model-60" in table and "base tiny" in table


@pytest.mark.slow
def test_documents_mode_lists_the_worst_documents(trained):
    root, model_dir, heldout = trained
    docs = write_text(root, "The quick brown fox jumps over the lazy dog.\nzebra quantum xylophone vortex\n"
                      "A stitch in time saves nine.\n", "docs.txt")
    rows = gpt2.evaluate(gpt2.start_tf_sess(), docs, checkpoint="latest", line_by_line=True, worst=2,
                         checkpoint_dir=str(root / "checkpoint"), print_table=False)
    (row,) = rows
    assert row["documents"] == 3
    assert row["worst"][0]["text"] == "zebra quantum xylophone vortex"
    assert [w["document"] for w in row["worst"]] == [2, row["worst"][1]["document"]]


def test_windows_score_every_token_once():
    chunk = np.arange(100)
    windows = cut_windows([chunk], 32)
    targets = np.concatenate([r[t] for r, t in zip(windows.rows, windows.targets)])
    assert targets.tolist() == list(range(1, 100))
    docs = cut_windows([np.array([9, 1, 2, 9, 3])], 32, eot=9)
    assert [r.tolist() for r in docs.rows] == [[9, 1, 2, 9], [9, 3, 9]]


@pytest.mark.slow
def test_command_prints_json_per_model(trained, capsys):
    root, model_dir, heldout = trained
    code = cli.main(["evaluate", heldout, "--checkpoint_dir", str(root / "checkpoint"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["model"] for r in rows] == ["base tiny", "model-30", "model-60"]
    assert all(r["loss"] > 0 for r in rows)


@pytest.mark.slow
def test_checkpoints_share_one_compiled_function(trained):
    from gpt2_simple.formats.folders import load_model
    from gpt2_simple.training.evaluate import HeldOutScorer

    root, model_dir, heldout = trained
    run = str(root / "checkpoint" / "run1")
    scorer = HeldOutScorer(load_model(os.path.join(model_dir, "tiny")))
    chunks = [np.arange(100) % 97, np.arange(40) % 97]
    first = scorer.row_losses(cut_windows(chunks, 32), 2)
    assert scorer.takes(load_model(run, "model-30"))  # its weights load into the compiled model
    later = scorer.row_losses(cut_windows(chunks, 32), 3)  # other batch sizes and lengths
    assert scorer.score.experimental_get_tracing_count() == 1
    assert not np.allclose(first, later)
