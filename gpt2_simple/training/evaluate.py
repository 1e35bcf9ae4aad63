"""Held-out scores: how well each checkpoint of a run, and its base model, predicts a text.

This module owns `evaluate`: it reads a held-out dataset the way training reads one (streams
or documents, `documents.load_chunks`), cuts it into windows of the model's context that
overlap by one token so every token after a chunk's first is predicted exactly once, scores
them in batches (`model.logprobs.token_logprobs`, the loss in nats) compiled once per model shape,
and reports per model the mean loss per token, perplexity and bits per byte (nats over the
UTF-8 bytes of the predicted tokens: comparable across tokenizers); in documents mode also the
mean loss per document and the worst documents. Which checkpoints a run has is
`checkpoint.py`'s; which base model it started from is the run's `training.json`
(`run_record.py`).
"""
import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from encoder import get_encoder

from ..formats import chat_template, run_record
from ..formats import checkpoint as checkpoint_files
from ..formats.folders import load_model
from ..formats.hub import model_folder
from ..model.logprobs import token_logprobs
from ..model.names import run_folder
from . import chats, documents
from .options import TrainOptions

EOT_BYTES = 1  # an end-of-text separator stands for the newline between two documents


@dataclasses.dataclass
class Windows:
    """A dataset cut into scoring windows: `rows[i]` tokens; `targets[i]` which of them are scored (bool);
    `docs[i]` its document."""

    rows: list
    targets: list
    docs: list
    texts: list  # documents mode: each document's text, for the worst-documents list


def _after_first(row):
    return np.arange(len(row)) >= 1  # every token a window predicts: all but its first


def cut_windows(chunks, n_ctx, eot=None, enc=None):
    """Windows of at most `n_ctx` tokens; with `eot` (documents mode) each document on its own rows;
    structured examples (`chats.Examples`) one a row, scoring the tokens training trains on."""
    rows, targets, docs, texts = [], [], [], []
    if isinstance(chunks, chats.Examples):
        rows = [np.asarray(t[:n_ctx], np.int32) for t in chunks.tokens]
        return Windows(rows, [m[:n_ctx] for m in chunks.masks], [-1] * len(rows), texts)
    if eot is None:
        for chunk in chunks:
            for begin in range(0, max(len(chunk) - 1, 0), n_ctx - 1):
                rows.append(np.asarray(chunk[begin:begin + n_ctx], np.int32))
                targets.append(_after_first(rows[-1]))
                docs.append(-1)
        return Windows(rows, targets, docs, texts)
    for chunk in chunks:
        for doc in documents.each_document(chunk, eot):
            texts.append(enc.decode([int(t) for t in doc[1:-1]]) if enc is not None else "")
            for begin in range(0, len(doc) - 1, n_ctx - 1):
                rows.append(doc[begin:begin + n_ctx])
                targets.append(_after_first(rows[-1]))
                docs.append(len(texts) - 1)
    return Windows(rows, targets, docs, texts)


class HeldOutScorer:
    """One compiled function scoring held-out windows with one model; other checkpoints of its shape load into it."""

    def __init__(self, model):
        self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32)])
        def score(tokens, mask):
            return -tf.reduce_sum(token_logprobs(model, tokens) * mask[:, 1:], axis=1)  # [batch] nats

        self.score = score

    def takes(self, other):
        """Copy `other`'s weights in, if it has this model's shapes; True when it did."""
        mine = self.model.weights
        if self.model.hparams != other.hparams or set(mine) != set(other.weights):
            return False
        if any(mine[n].shape != other.weights[n].shape or mine[n].dtype != other.weights[n].dtype for n in mine):
            return False
        for name, variable in mine.items():
            variable.assign(other.weights[name])
        return True

    def row_losses(self, windows, batch_size):
        """The summed loss in nats of each window's targets, batched by similar lengths."""
        order = np.argsort([-len(r) for r in windows.rows], kind="stable")
        out = np.zeros(len(windows.rows))
        for b in range(0, len(order), batch_size):
            picked = order[b:b + batch_size]
            width = max(len(windows.rows[i]) for i in picked)
            tokens = np.zeros((len(picked), width), np.int32)
            mask = np.zeros((len(picked), width), np.float32)
            for j, i in enumerate(picked):
                row = windows.rows[i]
                tokens[j, :len(row)] = row
                mask[j, :len(row)] = windows.targets[i]
            out[picked] = self.score(tf.constant(tokens), tf.constant(mask)).numpy()
        return out


def token_byte_lengths(enc):
    """UTF-8 bytes of each token id (`<|endoftext|>` counts as one: the newline it stands for)."""
    lengths = np.array([len(enc.decode_bytes([i])) for i in range(len(enc.encoder))], np.int64)
    if enc.eot_token is not None:
        lengths[enc.eot_token] = EOT_BYTES
    return lengths


def summarize(label, step, losses, windows, byte_lengths, worst):
    """One table row: mean loss per token, perplexity, bits per byte; per document in documents mode."""
    targets = np.concatenate([r[t] for r, t in zip(windows.rows, windows.targets)] or [np.zeros(0, int)])
    tokens, nbytes, nats = len(targets), int(byte_lengths[targets].sum()), float(losses.sum())
    loss = nats / max(tokens, 1)
    row = {"model": label, "step": step, "loss": loss, "perplexity": math.exp(min(loss, 80.0)),
           "bits_per_byte": nats / math.log(2) / max(nbytes, 1), "tokens": tokens, "bytes": nbytes}
    if windows.texts:
        docs = np.asarray(windows.docs)
        per_doc = np.bincount(docs, weights=losses, minlength=len(windows.texts))
        counts = np.bincount(docs, weights=[int(t.sum()) for t in windows.targets],
                             minlength=len(windows.texts))
        mean = per_doc / np.maximum(counts, 1)
        row["documents"] = len(windows.texts)
        row["document_loss"] = float(mean.mean())
        row["worst"] = [{"document": int(i) + 1, "loss": float(mean[i]), "text": windows.texts[i]}
                        for i in np.argsort(-mean, kind="stable")[:worst]]
    return row


def evaluate(sess, dataset, *, run_name=None, checkpoint_dir="checkpoint", checkpoint="all", model_name=None,
             model_dir="models", batch_size=8, line_by_line=None, text_field="text", worst=5, print_table=True):
    """Score a held-out text with each checkpoint of a run and with its base model, in one table.

    Args:
        sess: a `Session`; with checkpoint='session' its loaded model is scored.
        dataset: held-out text in any form `finetune` reads (file, folder or glob).
        run_name: the run to score, the folder `checkpoint_dir/run_name` (default: the run `sess`
            holds, from `finetune` or `load_gpt2`; otherwise 'run1').
        checkpoint_dir: the folder that holds the run folders.
        checkpoint: 'all' (every checkpoint the run keeps, plus its base model), 'latest', 'best',
            a checkpoint name such as 'model-1000', or 'session' (the model in `sess`).
        model_name: the base model to compare with, `model_dir/model_name` (default: the one the
            run recorded in its training.json); alone, without a run folder, it is scored alone.
        model_dir: the parent folder of the base model folders.
        batch_size: windows of n_ctx tokens scored together.
        line_by_line: score one document per line / row / record (default: as the run trained).
            Conversations and prompt/completion records score what training trains on (the
            replies, under the run's chat template).
        text_field: the key of .jsonl records that holds the text.
        worst: in documents mode, how many of the worst-predicted documents to list.
        print_table: print the table.

    Returns:
        A list of dicts, one per model: model, step, loss (nats per token), perplexity,
        bits_per_byte, tokens, bytes; in documents mode also documents, document_loss and worst
        (a list of {document: 1-based index, loss, text}). A run keeps the table in its
        evaluation.json, which its model card shows (`export_hf`).

    Raises:
        FileNotFoundError: no run folder and no model_name, or a missing checkpoint or dataset.
        ValueError: bad options.
    """
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer (8 is a good start)")
    run_dir = sess.folder if checkpoint == "session" else _run_dir(sess, run_name, checkpoint_dir)
    folders = _models_to_score(sess, run_dir, checkpoint, model_name, model_dir)
    enc = sess.encoder if checkpoint == "session" else get_encoder(folders[0][1])
    if line_by_line is None:
        line_by_line = run_record.trained_on_documents(run_dir)  # a base model alone: False
    # combine=1: each text file is its own chunk, without the `<|endoftext|>` text training joins files with
    opts = TrainOptions(line_by_line=bool(line_by_line), text_field=text_field, combine=1)
    chunks = documents.load_chunks(enc, dataset, opts, chat_template.read_run_template(run_dir))  # as it trained
    byte_lengths = token_byte_lengths(enc)
    rows, scorer = [], None
    for label, folder, name in folders:
        model = sess.model if name == "session" else load_model(folder, name)
        if scorer is None or not scorer.takes(model):
            scorer = HeldOutScorer(model)
        windows = cut_windows(chunks, model.hparams.n_ctx, enc.eot_token if line_by_line else None, enc)
        step = checkpoint_files.step_of(name) if name not in ("session", "latest") else None
        rows.append(summarize(label, step if step is None or step >= 0 else None,
                              scorer.row_losses(windows, batch_size), windows, byte_lengths, worst))
    if print_table:
        print(format_table(rows))
    if run_record.read_training(run_dir) is not None:  # a run's table goes into its model card
        run_record.record_evaluation(run_dir, dataset, rows)
    return rows


def _run_dir(sess, run_name, checkpoint_dir):
    """The run folder to score: `checkpoint_dir/run_name`; without `run_name`, the run the session holds
    (when it holds a run, not a base model), else `checkpoint_dir/run1`."""
    if run_name is None and run_record.read_training(sess.folder) is not None:  # finetune wrote it: a run
        return sess.folder
    return run_folder(checkpoint_dir, run_name or "run1")


def _models_to_score(sess, run_dir, checkpoint, model_name, model_dir):
    """[(label, folder, checkpoint name)] in table order: the base model first, then the run's checkpoints."""
    if checkpoint == "session":
        if sess.model is None:
            raise ValueError("checkpoint='session' but no model is loaded in sess; call gpt2.load_gpt2(sess) first")
        return [("session", sess.folder, "session")]
    base = model_folder(model_dir, model_name) if model_name else None
    if not os.path.isdir(run_dir):
        if base is None:
            raise FileNotFoundError(f"run folder {run_dir} does not exist; pass run_name= of a fine-tuned run "
                                    "(or model_name= to score a base model alone)")
        return [(f"base {model_name}", base, "latest")]
    if checkpoint == "all":
        names = [os.path.basename(p) for p in checkpoint_files.read_state(run_dir)]
        base = base or (run_record.read_training(run_dir) or {}).get("base_model")
    else:
        names = [os.path.basename(checkpoint_files.find_checkpoint(run_dir, checkpoint))]
    scored = [(f"base {os.path.basename(os.path.normpath(base))}", base, "latest")] if base else []
    return scored + [(name, run_dir, name) for name in names]


def format_table(rows):
    """The rows as an aligned text table, the worst documents below it."""
    lines = [f"{'model':<24} {'step':>7} {'loss/token':>10} {'perplexity':>10} {'bits/byte':>9} {'tokens':>9}"
             + (f" {'loss/doc':>9}" if "document_loss" in rows[0] else "")]
    for r in rows:
        step = "" if r["step"] is None else str(r["step"])
        lines.append(f"{r['model'][:24]:<24} {step:>7} {r['loss']:>10.4f} {r['perplexity']:>10.2f} "
                     f"{r['bits_per_byte']:>9.4f} {r['tokens']:>9}"
                     + (f" {r['document_loss']:>9.4f}" if "document_loss" in r else ""))
    for r in rows:
        for w in r.get("worst", []):
            lines.append(f"  {r['model']}: worst document {w['document']} (loss {w['loss']:.3f}): "
                         f"{' '.join(w['text'].split())[:70]}")
    return "\n".join(lines)
