"""Where one `Sampler.chunks` call stands between its compiled chunks: the rows' tokens and options.

This module owns a call's numpy state: each row's text so far, what it feeds next, its padding,
its seed, and where its own draws begin. Rows may join a running call (continuous batching: the
server's waiting requests take the slots of rows that have ended), so a row's draws are counted
from the chunk it joined at, and each row draws what it would alone; how a row joins is
`joining.py`'s. The caches are tensors and stay with `sample.Sampler`.
"""
import dataclasses

import numpy as np

from ..model.adapter_rows import BASE
from .options import MAX_STOP_TOKENS, NO_TOKEN, text_tail


@dataclasses.dataclass
class Decoding:
    """Where one `Sampler.chunks` call stands between compiled chunks."""

    history: np.ndarray  # int32 [batch, so_far]: every token so far, prompt included, left-padded with NO_TOKEN
    pending: np.ndarray  # int32 [batch, p]: fed to the model next, not yet in the caches (NO_TOKEN: padding)
    caches: tuple  # (keys, values): n_layer tensors each, growing or of a fixed window of positions
    out: np.ndarray  # int32 [batch, drawn]: the new tokens only (a joined row's begin at its `offsets`)
    ended: np.ndarray  # bool [batch]: rows that need no more tokens
    seeds: np.ndarray  # int64 [batch, 2]: each row's (seed, stream row), `draws.row_seeds`
    options: list  # each row's `SamplingOptions`
    until: np.ndarray  # int [batch]: the `out` column each row's wanted tokens end at
    start: int = None  # with fixed caches: the position of `pending`
    pads: np.ndarray = None  # int32 [batch]: each row's left padding in the caches
    offsets: np.ndarray = None  # int [batch]: the `out` column each row joined at (0: from the call's start)
    matrices: list = None  # the XLA loop's transposed block matrices, made at its first call (`columns.loop_matrices`)
    adapters: list = None  # each row's LoRA adapter, (slot, scale) (`adapter_rows.BASE`: none), with an adapter table

    def __post_init__(self):
        self.prompt(self.pending)
        self.offsets = np.zeros(len(self.history), np.int64) if self.offsets is None else self.offsets
        self.adapters = [BASE] * len(self.history) if self.adapters is None else list(self.adapters)

    def prompt(self, pending):
        """Start the caches over from `pending` (a left-padded prompt)."""
        self.pending, self.pads = pending, np.sum(pending == NO_TOKEN, axis=1, dtype=np.int32)

    @property
    def drawn(self):
        return self.out.shape[1]

    def left(self):
        """How many more tokens the live rows want at most (0 once none does)."""
        return max(0, int(self.until[~self.ended].max(initial=0)) - self.drawn)

    def index(self):
        """int64 `[batch]`: the index of each row's next draw in its own stream (`draws._draw`)."""
        return (self.drawn - self.offsets).astype(np.int64)

    def add(self, tokens):
        self.out = np.concatenate([self.out, tokens], axis=1)
        self.history = np.concatenate([self.history, tokens], axis=1)
        self.pending = tokens[:, -1:]

    def own(self):
        """int32 `[batch, drawn]`: `out` with NO_TOKEN before each row joined: each row's own draws."""
        return np.where(np.arange(self.drawn)[None, :] >= self.offsets[:, None], self.out, NO_TOKEN)

    def seen(self, n_vocab):
        """bool `[batch, n_vocab]`: the tokens of each row's text so far (the penalty's set)."""
        seen = np.zeros([len(self.history), n_vocab], bool)
        rows, columns = np.nonzero(self.history != NO_TOKEN)
        seen[rows, self.history[rows, columns]] = True
        return seen

    def counts(self, n_vocab):
        """float32 `[batch, n_vocab]`: how often each row has drawn each token (the additive penalties')."""
        counts = np.zeros([len(self.out), n_vocab], np.float32)
        for row, tokens in zip(counts, self.own()):
            np.add.at(row, tokens[tokens != NO_TOKEN], 1.0)
        return counts

    def recent(self):
        """int32 `[batch, MAX_STOP_TOKENS]`: each row's last drawn tokens, left-padded with NO_TOKEN."""
        return text_tail(self.own(), MAX_STOP_TOKENS)


def cache_window(positions, n_ctx):
    """The XLA loop's cache length for `positions` positions: a multiple of 128, at most n_ctx.

    A step reads its whole cache (single-threaded in XLA), so a short call does not pay for the
    full context (at batch 8 the full caches outweigh the model; docs/performance.md), nor for more
    than 127 unwritten positions. Each window compiles its own XLA program, once per batch size.
    """
    return min(128 * -(-max(positions, 1) // 128), n_ctx)


def xla_batch(rows, xla_max_batch):
    """The batch size a call of `rows` rows decodes at: up to `xla_max_batch`, the next power of two
    (XLA compiles a program for each batch size, so traffic meets a few sizes, not every one);
    beyond it, `rows` (the growing loop takes any size)."""
    return rows if rows > xla_max_batch else min(1 << (rows - 1).bit_length(), xla_max_batch)
