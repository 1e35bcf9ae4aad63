"""What a run shows while it trains: TensorBoard scalars, validation losses and training samples.

This module owns the reports of the loop in `train.py` besides its progress line: how long the
first step and the steady steps take and when the run will end (`StepClock`), the scalars
written to the run folder's events file (with core TF, so the `tensorboard` package stays
optional), the fixed validation sample and its loss, and gpt-2-simple's training samples
(`samples/<run_name>/samples-N`). It changes no weights.
"""
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from ..atomic import open_atomic
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



def validation_sample(enc, opts, window, template=None):
    """The fixed validation sample: `[val_batch_count, val_batch_size, seq]` tokens drawn with seed 1
    (`[..., 4, seq]` for structured examples; `template` is the text of the chat template rendering them)."""
    chunks = documents.load_chunks(enc, opts.val_dataset, opts, template)  # in the run's mode
    sampler = documents.make_sampler(chunks, enc, opts, seed=1)
    seq = min(window, sampler.longest)
    if seq < 2:
        raise ValueError(f"val_dataset {opts.val_dataset!r} has no chunk of 2 or more tokens; pass more text")
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
    with open_atomic(os.path.join(folder, f"samples-{counter}"), "w", encoding="utf-8") as f:
        f.write("\n".join(texts))


class StepClock:
    """Step times and the time left, printed on lines of their own (gpt-2-simple's lines stay as they are).

    The first step includes tracing and compiling; the estimate uses the steps after it. It is
    printed after the first and second steps, then each time another tenth of the run is done.
    """

    def __init__(self, steps):
        self.steps = steps  # steps in this call; -1: until interrupted
        self.first = None
        self.steady = []  # seconds of each step after the first

    def record(self, index, seconds):
        """The time of the step at `index` (0: the first of this call)."""
        if index == 0:
            self.first = seconds
        else:
            self.steady.append(seconds)

    def report(self, done):
        """After `done` steps of this call: the first step's cost, then the estimate at milestones."""
        if done == 1:
            print(f"The first step took {self.first:.1f} s, tracing and compiling included")
            return
        tenth = max(1, self.steps // 10)
        if not self.steady or (done != 2 and done % tenth):
            return
        per_step = sum(self.steady) / len(self.steady)
        if self.steps < 0:
            if done == 2:
                print(f"A step takes about {per_step:.1f} s (the first took {self.first:.1f} s); "
                      "training until interrupted")
            return
        left = self.steps - done
        if left > 0:
            print(f"A step takes about {per_step:.1f} s: {left} of {self.steps} steps left, "
                  f"about {format_duration(left * per_step)}")


def format_duration(seconds):
    """3725 -> '1 h 02 min'; 75 -> '1 min 15 s'; 8 -> '8 s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
