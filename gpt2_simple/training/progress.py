"""What a run shows while it trains: TensorBoard scalars, validation losses and training samples.

This module owns the reports of the loop in `train.py` besides its progress line: the scalars
written to the run folder's events file (with core TF, so the `tensorboard` package stays
optional), the fixed validation sample and its loss, and gpt-2-simple's training samples
(`samples/<run_name>/samples-N`). It changes no weights.
"""
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from ..model.names import sample_folder
from . import documents

# TensorBoard's scalar plugin reads events with this metadata. Writing them with the core
# `tf.summary.write` keeps the `tensorboard` package (which tensorflow-cpu lacks) optional.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
)


def log_scalars(step, **values):
    """TensorBoard scalars (`loss`, `avg_loss`, `val_loss`, ...) at `step`, to the default writer."""
    for tag, value in values.items():
        tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)



def validation_sample(enc, opts, window):
    """The fixed validation sample: `[val_batch_count, val_batch_size, seq]` tokens drawn with seed 1."""
    chunks = documents.load_chunks(enc, opts.val_dataset, opts)  # in the run's mode: documents or a stream
    seq = min(window, max(len(c) for c in chunks))
    if seq < 2:
        raise ValueError(f"val_dataset {opts.val_dataset!r} has no chunk of 2 or more tokens; pass more text")
    sampler = documents.make_sampler(chunks, enc, opts, seed=1)
    return np.stack([sampler.sample_batch(opts.val_batch_size, seq) for _ in range(opts.val_batch_count)])


def validate(eval_step, sample, step, start):
    """Mean loss over the validation sample: printed, and logged as val_loss and val_perplexity."""
    loss = float(np.mean([float(eval_step(tf.constant(batch, tf.int32))) for batch in sample]))
    perplexity = float(np.exp(min(loss, 80.0)))
    print(f"[{step} | {time.time() - start:2.2f}] validation loss = {loss:2.2f} perplexity = {perplexity:2.2f}")
    log_scalars(step, val_loss=loss, val_perplexity=perplexity)
    return loss


def generate_samples(sess, data, opts, counter, seed):
    """gpt-2-simple's training samples: `sample_num` texts from one random dataset token."""
    # Its own random stream, so sampling never shifts the training windows that follow.
    rng = np.random.default_rng([seed, counter])
    chunk = data.chunks[int(rng.integers(len(data.chunks)))]
    context = [int(chunk[int(rng.integers(len(chunk)))])]
    if opts.line_by_line:
        context = [sess.encoder.eot_token]  # a sample of documents starts where a document starts
    texts = []
    while len(texts) < opts.sample_num:
        rows = np.tile(np.asarray(context, np.int32)[None], (opts.batch_size, 1))
        out = sess.sampler.sample(rows, opts.sample_length, temperature=1.0, top_k=40,
                                  seed=int(rng.integers(2**62)))
        for row in out[: opts.sample_num - len(texts)]:
            text = sess.encoder.decode(list(context) + list(row))
            texts.append(f"======== SAMPLE {len(texts) + 1} ========\n{text}\n")
    print(texts[-1])
    folder = sample_folder(opts.sample_dir, opts.run_name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"samples-{counter}"), "w", encoding="utf-8") as f:
        f.write("\n".join(texts))
