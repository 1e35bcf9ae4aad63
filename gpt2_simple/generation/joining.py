"""Rows joining a running decoding call (continuous batching): the one place that makes room for them.

This module owns what happens between two compiled chunks when waiting rows join a call in the
fixed-window (XLA) loop: which rows fit (no text may outgrow the context), growing the batch to
the next power of two, moving every row right when a longer prompt needs room before the next
position (more left padding, the same positions), putting each joining row in its slot with a
clean history and its own draw index, and the caches that follow: padded, widened and written
with each joining prompt as `Sampler`'s prefill reads it. A call's numpy state is `decoding.py`'s;
the loops are `sample.py`'s. A joined row draws what it would alone.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from ..model.adapter_rows import BASE
from .decoding import Decoding, cache_window
from .options import NO_TOKEN, SamplingOptions


@dataclasses.dataclass(frozen=True)
class Joining:
    """A row that joins a running call: its prompt, options, (seed, stream row), tokens wanted and LoRA adapter."""

    tokens: list
    options: SamplingOptions
    seed: tuple
    length: int
    adapter: tuple = BASE  # (slot, scale) in the sampler's `adapter_rows.AdapterTable`


def shifted_start(state: Decoding, rows):
    """The position of `pending` once `rows` are in: each row's prompt but its last token must fit before it."""
    return max([state.start] + [len(row.tokens) - 1 for row in rows])


def fits(state: Decoding, rows, n_ctx):
    """Whether `rows` can join the fixed-window call `state` now: no text outgrows the context."""
    wanted = max([state.left()] + [row.length for row in rows])
    return all(row.tokens for row in rows) and shifted_start(state, rows) + wanted <= n_ctx


def admit(state: Decoding, rows, slots, *, size, hparams, prefill, empty):
    """Put `rows` in `slots` of `state` and its caches: the batch grows to `size` rows, the window to what rows want.

    Args:
        state: the call's `Decoding` (fixed-window: `start` is set, `pending` is one column).
        rows: `Joining` rows, which take `slots` in order.
        slots: ended rows' indexes, or new ones below `size`.
        size: the batch's rows afterwards (at least today's).
        hparams: the model's (the caches hold `[batch * n_head, positions, head_dim]`).
        prefill: `(tokens [1, p], adapter)` -> (keys, values) of a prompt read alone; `empty(batch)`: empty caches.
    """
    old_window = state.caches[0][0].shape[1]
    grow, shift = size - len(state.ended), shifted_start(state, rows) - state.start
    _grow(state, size)
    _shift(state, shift)
    for slot, row in zip(slots, rows):
        place(state, slot, row)
    n_head, window = hparams.n_head, max(old_window, cache_window(state.start + state.left(), hparams.n_ctx))
    reads = [prefill(tf.constant([row.tokens[:-1]]), row.adapter) if len(row.tokens) > 1 else empty(1) for row in rows]
    indexes = tf.constant([[slot * n_head + h] for slot in slots for h in range(n_head)])
    caches = []
    for kind, old in enumerate(state.caches):
        caches.append([tf.tensor_scatter_nd_update(
            tf.pad(c, [[0, grow * n_head], [shift, max(0, window - old_window - shift)], [0, 0]])[:, :window], indexes,
            tf.concat([tf.pad(read[kind][layer], [[0, 0], [state.pads[slot], window - state.start], [0, 0]])
                       for slot, read in zip(slots, reads)], axis=0))
            for layer, c in enumerate(old)])
    state.caches = tuple(caches)


def _grow(state, size):
    """Add ended filler rows up to `size` rows."""
    extra = size - len(state.history)

    def more(array, value):
        return np.concatenate([array, np.full((extra,) + array.shape[1:], value, array.dtype)])

    state.history, state.pending, state.out = more(state.history, NO_TOKEN), more(state.pending, 0), more(state.out, 0)
    state.ended, state.seeds, state.until = more(state.ended, True), more(state.seeds, 0), more(state.until, 0)
    state.pads, state.offsets = more(state.pads, state.start), more(state.offsets, state.drawn)
    state.options = state.options + state.options[:1] * extra  # one guard a batch: the fillers carry the batch's
    state.adapters = state.adapters + [BASE] * extra


def _shift(state, by):
    """Move every row `by` positions right (more left padding), so that a longer prompt fits before `start`."""
    state.history = np.pad(state.history, [(0, 0), (by, 0)], constant_values=NO_TOKEN)
    state.pads, state.start = state.pads + by, state.start + by


def place(state, slot, row):
    """Put `row` (a `Joining`) in `slot`: its prompt ends at `pending`, and its draws start at index 0."""
    state.history[slot] = NO_TOKEN
    state.history[slot, state.history.shape[1] - len(row.tokens):] = row.tokens
    state.pending[slot], state.pads[slot] = row.tokens[-1], state.start - (len(row.tokens) - 1)
    state.ended[slot], state.seeds[slot], state.options[slot] = False, row.seed, row.options
    state.offsets[slot], state.until[slot] = state.drawn, state.drawn + row.length
    state.adapters[slot] = row.adapter
