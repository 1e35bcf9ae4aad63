"""The copy guard for compiled decoding: which next tokens would copy more than N tokens of training text.

This module owns `avoid_copies=N`'s index and its graph function. The index lists every distinct
(N-token span, the token that follows it) pair of the training tokens, the span hashed to the
same 62-bit key as `copies.py`'s, sorted by key: 12 bytes a pair. `banned(tail, n, ...)` hashes
each row's last N tokens with int64 ops that never overflow, finds the first pair of that key by a
binary search (log2(pairs) gathers), looks at up to `cap` pairs from there and scatters
their next tokens into a `[batch, n_vocab]` mask: a token is banned when the N tokens before it
plus itself form a span of the training data. N and the index are tensors, and every shape is
fixed by them, so it compiles under XLA inside a decoding loop, and turning the guard on or off
never retraces (`draws.Steer.draw` masks the banned logits). It does not edit logits or sample (the caller masks
its logits with it), and it does not report copies after the fact (`copies.py`).
"""
import numpy as np
import tensorflow as tf

from .copies import BASES, MODULI, span_keys

CAP = 64  # next tokens looked at per span: a span followed by more distinct tokens bans its first 64
WINDOW = 64  # the longest N: the loop keeps each row's last WINDOW tokens
_SENTINEL = np.iinfo(np.int64).max  # past the end of the sorted keys


class GuardIndex:
    """Distinct (key of an N-token span, next token) pairs of the training tokens, sorted.

    Attributes:
        n: the span length N.
        keys: int64 `[pairs]`, sorted.
        nexts: int32 `[pairs]`, the token after each span.
    """

    def __init__(self, tokens, n):
        if not check_span(n):
            raise ValueError(f"avoid_copies={n!r} must be a number of tokens from 1 to {WINDOW} (e.g. 16), or 0 for off")
        tokens = np.asarray(tokens)
        self.n = n
        keys = span_keys(tokens, n)[:-1]  # spans that have a next token
        nexts = tokens[n:].astype(np.int64)
        order = np.lexsort((nexts, keys))  # by key, then next token
        keys, nexts = keys[order], nexts[order]
        fresh = np.ones(len(keys), bool)
        fresh[1:] = (keys[1:] != keys[:-1]) | (nexts[1:] != nexts[:-1])  # each pair once
        self.keys = keys[fresh]
        self.nexts = nexts[fresh].astype(np.int32)
        self._tensors = None

    @property
    def nbytes(self):
        return self.keys.nbytes + self.nexts.nbytes

    def tensors(self):
        """(keys int64 `[pairs + 1]`, nexts int32 `[pairs + 1]`): the arrays with a sentinel key at the end, as
        tensors made once (every `sample` call passes them to the loop; the index may be hundreds of MB)."""
        if self._tensors is None:
            self._tensors = (tf.constant(np.append(self.keys, _SENTINEL)),
                             tf.constant(np.append(self.nexts, 0).astype(np.int32)))
        return self._tensors


def check_span(n, name="avoid_copies"):
    """`n` itself when it is 0 (off) or a span length from 1 to WINDOW; ValueError naming `name` otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= WINDOW:
        raise ValueError(f"{name}={n!r} must be a number of tokens from 1 to {WINDOW} (e.g. 16), or 0 for off")
    return int(n)


def no_guard():
    """The guard's tensors when `avoid_copies` is off: an index of no pairs (only the sentinel)."""
    return np.array([_SENTINEL], np.int64), np.zeros(1, np.int32)


def banned(tail, n, keys, nexts, n_vocab, cap=CAP):
    """Which next tokens would make a row's last n + 1 tokens a span of the training data.

    A graph function for inside a decoding loop: every shape is fixed by `tail`'s and the index's,
    so XLA compiles it once per index (the index is an input, not a constant).

    Args:
        tail: int32 `[batch, WINDOW]`, each row's last tokens (prompt included), -1 on the left
            when a row has fewer. A row whose last n hold a -1 bans nothing.
        n: int32 scalar, the span length N (1..WINDOW): `GuardIndex.n`.
        keys, nexts: `GuardIndex.tensors()`.
        n_vocab: the vocabulary size.
        cap: next tokens looked at per span.

    Returns:
        bool `[batch, n_vocab]`.
    """
    key = _span_key(tail, n)  # [batch] int64
    size = tf.shape(keys)[0] - 1  # the last key is the sentinel

    def halve(lo, hi):  # one step of the lower bound of `key` in the sorted keys
        mid = (lo + hi) // 2
        below = tf.gather(keys, mid) < key
        return tf.where(below, mid + 1, lo), tf.where(below, hi, mid)

    lo, _ = tf.while_loop(lambda lo, hi: tf.reduce_any(lo < hi), halve,
                          (tf.zeros_like(key, tf.int32), tf.fill(tf.shape(key), size)))
    at = tf.minimum(lo[:, None] + tf.range(cap)[None, :], size)  # [batch, cap]: up to cap pairs from there
    whole = tf.reduce_all((tail >= 0) | (tf.range(WINDOW) < WINDOW - n)[None, :], axis=1, keepdims=True)
    hit = tf.equal(tf.gather(keys, at), key[:, None]) & whole
    rows = tf.broadcast_to(tf.range(tf.shape(tail)[0])[:, None], tf.shape(at))
    where = tf.stack([rows, tf.where(hit, tf.gather(nexts, at), 0)], axis=-1)  # [batch, cap, 2]
    counts = tf.scatter_nd(tf.reshape(where, [-1, 2]), tf.reshape(tf.cast(hit, tf.int32), [-1]),
                           tf.stack([tf.shape(tail)[0], n_vocab]))
    return counts > 0


def _span_key(tail, n):
    """`copies.span_keys` of each row's last n tokens, in int64 TF ops: [batch, WINDOW] -> [batch].

    Horner's sum over the last n positions is sum(t_i * base**(WINDOW - 1 - i)); each product is
    below 2**47 (ids below 2**16, powers below 2**31) and 64 of them below 2**53: no overflow.
    """
    tokens = tf.cast(tail, tf.int64) + 1
    last = tf.range(WINDOW) >= WINDOW - n  # [WINDOW]
    parts = []
    for modulus, base in zip(MODULI, BASES):
        powers = tf.constant([pow(base, WINDOW - 1 - i, modulus) for i in range(WINDOW)], tf.int64)
        parts.append(tf.reduce_sum(tf.where(last[None, :], tokens * powers[None, :], 0), axis=1) % modulus)
    return tf.bitwise.left_shift(parts[0], 31) | parts[1]
