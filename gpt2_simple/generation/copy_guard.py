"""The copy guard for compiled decoding: which next tokens would copy more than N tokens of training text.

This module owns `avoid_copies=N`'s index and its graph function. The index lists every distinct
(N-token span, the token that follows it) pair of the training tokens, the span hashed to the
same 62-bit key as `copies.py`'s, sorted by key: 12 bytes a pair. `banned(recent)` hashes each
row's last N tokens with int64 ops that never overflow, finds the first pair of that key by a
binary search of fixed depth (ceil(log2(pairs + 1)) gathers), looks at up to `cap` pairs from
there and scatters their next tokens into a `[batch, n_vocab]` mask: a token is banned when the
N tokens before it plus itself form a span of the training data. Every shape is fixed, so it
compiles under XLA inside a decoding loop. It does not edit logits or sample (the caller masks
its logits with it), and it does not report copies after the fact (`copies.py`).
"""
import math

import numpy as np
import tensorflow as tf

from .copies import BASES, MODULI, span_keys

CAP = 64  # next tokens looked at per span: a span followed by more distinct tokens bans its first 64


class GuardIndex:
    """Distinct (key of an N-token span, next token) pairs of the training tokens, sorted.

    Attributes:
        n: the span length N.
        keys: int64 `[pairs]`, sorted.
        nexts: int32 `[pairs]`, the token after each span.
    """

    def __init__(self, tokens, n):
        if not (isinstance(n, int) and n > 0):
            raise ValueError(f"avoid_copies={n!r} must be a positive number of tokens (e.g. 16)")
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

    @property
    def nbytes(self):
        return self.keys.nbytes + self.nexts.nbytes


def banned_function(index, n_vocab, cap=CAP):
    """`banned(recent) -> bool [batch, n_vocab]`, a graph function to call inside a decoding loop.

    Args:
        index: a `GuardIndex` of N-token spans.
        n_vocab: the vocabulary size.
        cap: next tokens looked at per span.

    Returns:
        A function of int32 `recent` `[batch, N]` (each row's last N tokens, -1 on the left when
        a row has fewer): True where that token after the row would make its last N + 1 tokens a
        span of the training data. A row holding a -1 bans nothing. Pure TF ops with static shapes
        (XLA-compatible); the index is captured as constants.
    """
    keys = tf.constant(np.append(index.keys, np.iinfo(np.int64).max))  # a sentinel past the end
    nexts = tf.constant(np.append(index.nexts, 0).astype(np.int32))
    size = len(index.keys)
    depth = max(1, math.ceil(math.log2(size + 1)))
    ramp = tf.range(cap, dtype=tf.int32)

    def banned(recent):
        recent = tf.convert_to_tensor(recent, tf.int32)
        key = _span_key(recent, index.n)  # [batch] int64
        lo = tf.zeros_like(recent[:, 0])
        hi = tf.fill(tf.shape(lo), size)
        for _ in range(depth):  # lower bound of `key` in the sorted keys
            mid = (lo + hi) // 2
            below = tf.gather(keys, mid) < key
            lo, hi = tf.where(below, mid + 1, lo), tf.where(below, hi, mid)
        at = tf.minimum(lo[:, None] + ramp[None, :], size)  # [batch, cap]: up to cap pairs from there
        hit = tf.equal(tf.gather(keys, at), key[:, None]) & tf.reduce_all(recent >= 0, axis=1, keepdims=True)
        rows = tf.broadcast_to(tf.range(tf.shape(recent)[0])[:, None], tf.shape(at))
        where = tf.stack([rows, tf.where(hit, tf.gather(nexts, at), 0)], axis=-1)  # [batch, cap, 2]
        counts = tf.scatter_nd(tf.reshape(where, [-1, 2]), tf.reshape(tf.cast(hit, tf.int32), [-1]),
                               tf.stack([tf.shape(recent)[0], n_vocab]))
        return counts > 0

    return banned


def _span_key(recent, n):
    """`copies.span_keys` of each row, in int64 TF ops: [batch, N] -> [batch]."""
    tokens = tf.cast(recent, tf.int64) + 1
    parts = []
    for modulus, base in zip(MODULI, BASES):
        h = tf.zeros_like(tokens[:, 0])
        for i in range(n):
            h = (h * base + tokens[:, i]) % modulus
        parts.append(h)
    return tf.bitwise.left_shift(parts[0], 31) | parts[1]
