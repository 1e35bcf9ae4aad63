"""`SamplingOptions`: every choice that shapes a draw, built once by a caller and carried to the loops.

This module owns the options' one frozen value (hashable, so equal options can share a batch) and
their tensors (`Knobs`), which the compiled loops take as one structure: a new value is a new
tensor, never a retrace. What each option does is `draws.py`'s; the loops are `sample.py`'s.
"""
import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from .copy_guard import WINDOW, no_guard

# Stop sequences: at most this many, each its last this many tokens (a fixed shape, so XLA compiles once).
MAX_STOPS, MAX_STOP_TOKENS = 8, 16
NO_TOKEN = -1  # pads stop sequences on the left (matches anything) and the recent tokens (matches nothing real)


class Knobs(NamedTuple):
    """The options' tensors, as the compiled loops take them: one value a row, so mixed requests share a batch."""

    temperature: tf.Tensor  # float32 [batch]
    top_k: tf.Tensor  # int32 [batch]
    top_p: tf.Tensor  # float32 [batch]
    min_p: tf.Tensor  # float32 [batch]
    repetition_penalty: tf.Tensor  # float32 [batch]
    presence_penalty: tf.Tensor  # float32 [batch]
    frequency_penalty: tf.Tensor  # float32 [batch]
    logit_bias: tf.Tensor  # float32 [batch, n_vocab]
    stops: tf.Tensor  # int32 [batch, MAX_STOPS, MAX_STOP_TOKENS], left-padded with NO_TOKEN
    avoid_copies: tf.Tensor  # int32 []: N of the copy guard, 0 = off (one guard a batch)
    guard_keys: tf.Tensor  # int64 [pairs + 1]: the guard's index (`copy_guard.GuardIndex.tensors`)
    guard_nexts: tf.Tensor  # int32 [pairs + 1]

    @staticmethod
    def specs(n_vocab):
        rows = tf.TensorSpec([None], tf.float32)
        return Knobs(temperature=rows, top_k=tf.TensorSpec([None], tf.int32), top_p=rows, min_p=rows,
                     repetition_penalty=rows, presence_penalty=rows, frequency_penalty=rows,
                     logit_bias=tf.TensorSpec([None, n_vocab], tf.float32),
                     stops=tf.TensorSpec([None, MAX_STOPS, MAX_STOP_TOKENS], tf.int32),
                     avoid_copies=tf.TensorSpec([], tf.int32), guard_keys=tf.TensorSpec([None], tf.int64),
                     guard_nexts=tf.TensorSpec([None], tf.int32))

    @staticmethod
    def of(rows, n_vocab, guard=None):
        """The tensors of `rows`, one `SamplingOptions` a row, all with the same `avoid_copies`.

        `guard` is the `copy_guard.GuardIndex` of `avoid_copies` tokens when the guard is on, else None.
        """
        n = {o.avoid_copies for o in rows}
        if len(n) > 1:
            raise ValueError(f"avoid_copies differs between the rows of a batch ({sorted(n)}); one guard serves a batch")
        n = n.pop()
        if bool(n) != (guard is not None) or (guard is not None and guard.n != n):
            raise ValueError(f"avoid_copies={n!r} needs the guard index of that many tokens "
                             f"(got {guard and guard.n}); build it with copy_guard.GuardIndex(training tokens, N)")
        keys, nexts = guard.tensors() if guard is not None else (tf.constant(a) for a in no_guard())
        return Knobs(
            **{name: tf.constant([getattr(o, name) for o in rows], dtype) for name, dtype in Knobs.per_row(n_vocab)},
            logit_bias=tf.constant(np.stack([bias_vector(o.logit_bias, n_vocab) for o in rows])),
            stops=tf.constant(np.stack([stop_table(o.stop_tokens) for o in rows])),
            avoid_copies=tf.constant(n, tf.int32), guard_keys=keys, guard_nexts=nexts)

    @staticmethod
    def per_row(n_vocab):
        """[(option, dtype)] of the knobs that hold one scalar a row, each named as its `SamplingOptions` field."""
        specs = Knobs.specs(n_vocab)._asdict()
        return [(field.name, specs[field.name].dtype) for field in dataclasses.fields(SamplingOptions)
                if field.name in specs and specs[field.name].shape.rank == 1]

    @staticmethod
    def filled(batch, n_vocab, stops, **given):
        """In-graph knobs of `batch` rows that share their options (the SavedModel's signature).

        Each option `given` (a scalar tensor) is filled to the rows; every other one is off (its
        `SamplingOptions` default); no logit bias, the stop table `stops` for every row, no guard.
        """
        defaults = SamplingOptions()
        rows = {name: tf.fill([batch], tf.cast(given.pop(name, getattr(defaults, name)), dtype))
                for name, dtype in Knobs.per_row(n_vocab)}
        if given:
            raise TypeError(f"Knobs.filled takes per-row options only, not {sorted(given)}")
        keys, nexts = no_guard()
        return Knobs(**rows, logit_bias=tf.zeros([batch, n_vocab]), stops=tf.tile(stops[None], [batch, 1, 1]),
                     avoid_copies=tf.constant(0), guard_keys=tf.constant(keys), guard_nexts=tf.constant(nexts))


class Steering(NamedTuple):
    """The decoding loop's state, one value a row: what the penalties, the stop sequences and the guard read."""

    seen: tf.Tensor  # bool [batch, n_vocab]: the text's tokens, prompt included (the repetition penalty's)
    recent: tf.Tensor  # int32 [batch, MAX_STOP_TOKENS]: each row's last drawn tokens, left-padded with NO_TOKEN
    counts: tf.Tensor  # float32 [batch, n_vocab]: each token's draws so far (OpenAI's penalties)
    tail: tf.Tensor  # int32 [batch, WINDOW]: each row's last tokens, prompt included (the copy guard's)
    ended: tf.Tensor  # bool [batch]: rows that need no more tokens

    @staticmethod
    def specs(n_vocab):
        return Steering(seen=tf.TensorSpec([None, n_vocab], tf.bool),
                        recent=tf.TensorSpec([None, MAX_STOP_TOKENS], tf.int32),
                        counts=tf.TensorSpec([None, n_vocab], tf.float32), tail=tf.TensorSpec([None, WINDOW], tf.int32),
                        ended=tf.TensorSpec([None], tf.bool))


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How tokens are drawn; the defaults change nothing (`Sampler.sample` documents each)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple = ()  # ((token id, bias), ...)
    stop_tokens: tuple = ()  # token sequences
    avoid_copies: int = 0  # N: no span of the training data longer than N tokens (0: off; needs a guard index)

    @classmethod
    def make(cls, *, logit_bias=None, stop_tokens=(), **options):
        """From `generate`-style arguments: `logit_bias` a dict or None, `stop_tokens` any sequences."""
        return cls(logit_bias=tuple(sorted((logit_bias or {}).items())),
                   stop_tokens=tuple(tuple(int(t) for t in seq) for seq in stop_tokens), **options)


def text_tail(tokens, width=WINDOW):
    """int32 `[batch, width]`: each row's last `width` tokens, left-padded with NO_TOKEN."""
    last = np.asarray(tokens, np.int32)[:, -width:]
    return np.pad(last, [(0, 0), (width - last.shape[1], 0)], constant_values=NO_TOKEN)


def left_padded(rows):
    """int32 `[batch, longest]`: `rows` (token lists of any lengths, or an array) right-aligned, padded with NO_TOKEN."""
    if isinstance(rows, np.ndarray) or len({len(row) for row in rows}) == 1:
        return np.asarray(rows, np.int32)
    padded = np.full([len(rows), max(map(len, rows))], NO_TOKEN, np.int32)
    for out, row in zip(padded, rows):
        out[len(out) - len(row):] = row
    return padded


def bias_vector(logit_bias, n_vocab):
    """{token id: bias}, ((id, bias), ...) or None -> float32 `[n_vocab]`; ValueError naming an id out of range."""
    vector = np.zeros(n_vocab, np.float32)
    pairs = logit_bias.items() if isinstance(logit_bias, dict) else logit_bias or ()
    for token, bias in pairs:
        if not (isinstance(token, (int, np.integer)) and 0 <= token < n_vocab):
            raise ValueError(f"logit_bias has token id {token!r}; ids must be integers in [0, {n_vocab})")
        vector[token] = bias
    return vector


def stop_table(stop_tokens):
    """Up to MAX_STOPS token sequences -> int32 `[MAX_STOPS, MAX_STOP_TOKENS]`, left-padded with -1."""
    stop_tokens = [list(map(int, seq)) for seq in stop_tokens if len(seq)]
    if len(stop_tokens) > MAX_STOPS:
        raise ValueError(f"stop_tokens has {len(stop_tokens)} sequences; at most {MAX_STOPS} are allowed")
    table = np.full([MAX_STOPS, MAX_STOP_TOKENS], NO_TOKEN, np.int32)
    for row, seq in zip(table, stop_tokens):
        seq = seq[-MAX_STOP_TOKENS:]
        row[MAX_STOP_TOKENS - len(seq):] = seq
    return table


def stop_hits(windows, stops):
    """The one stop-sequence matcher (in the graph): which sequences of a stop table end each window.

    Args:
        windows: int32 `[..., MAX_STOP_TOKENS]`, each the last tokens drawn up to some step,
            left-padded with NO_TOKEN (which no real token equals).
        stops: `stop_table`'s int32 `[MAX_STOPS, MAX_STOP_TOKENS]`.

    Returns:
        bool `[..., MAX_STOPS]`; an all-padding row of the table (no sequence) never matches.
    """
    wild = tf.equal(stops, NO_TOKEN)  # a sequence's left padding matches anything
    matches = tf.reduce_all(tf.equal(windows[..., None, :], stops) | wild, axis=-1)
    return matches & ~tf.reduce_all(wild, axis=-1)
