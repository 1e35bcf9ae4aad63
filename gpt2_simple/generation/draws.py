"""Filters and draws: temperature, top-k and top-p on logits, and seeded, loop-independent draws.

This module owns turning one position's logits into one token id: damping repeats (`penalize`),
OpenAI's penalties and logit bias (`adjust_logits`), scaling and filtering them
(`filter_logits`, with min_p), and drawing from the result with the Gumbel-max trick over counter-based
noise (`_draw`), so that a token's randomness depends only on the seed and its index, never on
chunking or on which decoding loop draws it; and `Steer`, which applies all of it (and the copy
guard's ban) inside a compiled loop, one step at a time, and carries the loop's `Steering` on.
The loops themselves are `sample.py`'s.
"""
import numpy as np
import tensorflow as tf

from .copy_guard import banned
from .options import Steering, stop_hits

_STATIC_TOP_K = 64  # under XLA, top_k <= this uses a top-k of constant size instead of a sort
_TOP_P_CANDIDATES = 256  # top_p looks for its nucleus among this many likeliest tokens first
_FILTERED = -1e10  # the logit given to tokens a filter removes (OpenAI's value; never NaN)


def filter_logits(logits, temperature, top_k, top_p, *, sort=False, min_p=0.0):
    """Scale and filter `[batch, n_vocab]` logits.

    Args:
        logits: float32 `[batch, n_vocab]`.
        temperature: > 0; logits are divided by it.
        top_k: keep the k largest logits; 0 keeps all.
        top_p: if > 0, keep the smallest set of tokens whose probability reaches top_p
            (nucleus sampling); as in gpt-2-simple it then replaces top_k.
        sort: find the k-th largest logit by sorting (XLA needs a constant k for top_k).
        min_p: in [0, 1]; keep only the tokens whose probability after temperature is at least
            min_p times the likeliest token's (0 keeps all, 1 only the likeliest).
        Each option is a scalar, or `[batch]` (one value a row: a batch of mixed requests).

    Returns:
        float32 `[batch, n_vocab]`; at least one token per row keeps its (scaled) logit.
    """
    scaled, kept = _scale_and_keep(logits, temperature, top_k, top_p, min_p, sort=sort)
    return tf.where(kept, scaled, _FILTERED)


def _column(option, dtype, batch=None):
    """A scalar or `[batch]` option as `[batch or 1, 1]` of `dtype`, to broadcast against `[batch, n_vocab]`."""
    column = tf.reshape(tf.cast(option, dtype), [-1, 1])
    return column if batch is None else tf.broadcast_to(column, [batch, 1])


def _scale_and_keep(logits, temperature, top_k, top_p, min_p, *, sort=False):
    """`filter_logits`' work: (the scaled logits, bool `[batch, n_vocab]` of the tokens kept, >= 1 a row)."""
    batch, n_vocab = tf.shape(logits)[0], logits.shape[-1]
    logits = logits / _column(temperature, logits.dtype)
    top_k, top_p = _column(top_k, tf.int32, batch), _column(top_p, logits.dtype, batch)
    everything = tf.ones_like(logits, tf.bool)

    def kth(largest, k):
        """The k-th largest logit of each row ([batch, 1]), from its largest ones in descending order."""
        return tf.gather(largest, k - 1, batch_dims=1)

    def keep_top_k():
        k = tf.clip_by_value(top_k, 1, n_vocab)  # rows without top_k keep everything below
        if sort:  # XLA: top_k with a constant k, or a full sort for a larger k
            bound = min(_STATIC_TOP_K, n_vocab)
            threshold = tf.cond(
                tf.reduce_max(k) <= bound,
                lambda: kth(tf.math.top_k(logits, k=bound).values, k),
                lambda: kth(tf.sort(logits, axis=-1, direction="DESCENDING"), k),
            )
        else:
            threshold = kth(tf.math.top_k(logits, k=tf.reduce_max(k)).values, k)
        return (logits >= threshold) | (top_k <= 0)

    def nucleus(ordered):
        """The logits kept, given the largest ones in descending order: (kept, whether `ordered` held every nucleus)."""
        probs = tf.exp(ordered - tf.reduce_logsumexp(logits, axis=-1, keepdims=True))  # over the whole vocabulary
        before = tf.cumsum(probs, axis=-1, exclusive=True)
        # The token whose preceding mass is still below top_p is the last one kept (always >= 1).
        n_kept = tf.maximum(tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1, keepdims=True), 1)
        held = (before[:, -1:] >= top_p) | (top_p <= 0.0)
        return logits >= kth(ordered, n_kept), tf.reduce_all(held)

    def keep_top_p():
        # The nucleus nearly always lies among the likeliest _TOP_P_CANDIDATES tokens: a top-k of
        # constant size finds them far faster than a sort of the whole vocabulary (docs/performance.md);
        # sort only when it does not.
        bound = min(_TOP_P_CANDIDATES, n_vocab)
        kept, held = nucleus(tf.math.top_k(logits, k=bound).values)
        return tf.cond(held, lambda: kept, lambda: nucleus(tf.sort(logits, axis=-1, direction="DESCENDING"))[0])

    # Each filter runs only when some row asks for it; a row's top_p replaces its top_k.
    kept = tf.cond(tf.reduce_any(top_k > 0), keep_top_k, lambda: everything)
    kept = tf.where(top_p > 0.0, tf.cond(tf.reduce_any(top_p > 0.0), keep_top_p, lambda: everything), kept)
    # min_p: p >= min_p * p_max, i.e. logit >= max logit + log(min_p); log(0) = -inf keeps all.
    # Every filter keeps the likeliest token, so the intersection keeps >= 1 a row.
    floor = tf.reduce_max(logits, axis=-1, keepdims=True) + tf.math.log(_column(min_p, logits.dtype))
    return logits, kept & (logits >= floor)


def adjust_logits(logits, seen, counts, adjust):
    """Every per-step change to one position's logits before temperature and the filters.

    Args:
        logits: float32 `[batch, n_vocab]`.
        seen: bool `[batch, n_vocab]`: the tokens of the text so far, prompt included.
        counts: float32 `[batch, n_vocab]`: how often each token was drawn so far (generated only).
        adjust: float32 tensors (repetition_penalty, presence_penalty, frequency_penalty,
            logit_bias `[n_vocab]`): scalars, or one a row (`[batch]`, logit_bias `[batch, n_vocab]`).

    Returns:
        float32 `[batch, n_vocab]`; the neutral values (1, 0, 0, zeros) return `logits` bit for bit.
    """
    repetition, presence, frequency, bias = adjust
    logits = penalize(logits, seen, repetition)
    # OpenAI's additive penalties, over the generated tokens only (as OpenAI and vLLM count them).
    frequency, presence = _column(frequency, logits.dtype), _column(presence, logits.dtype)
    logits = logits - (frequency * counts + presence * tf.cast(counts > 0, logits.dtype))
    return logits + bias


def penalize(logits, seen, penalty):
    """The CTRL repetition penalty (Keskar et al. 2019, as in transformers), before temperature.

    Args:
        logits: float32 `[batch, n_vocab]`.
        seen: bool, broadcastable to `logits`: the tokens already in the text.
        penalty: float32 >= 0, a scalar or one a row (`[batch]`); positive logits of seen tokens are
            divided by it, negative ones multiplied, so > 1 makes repeats less likely. 1.0 leaves
            every logit exactly as is.

    Returns:
        float32 like `logits`.
    """
    penalty = _column(penalty, logits.dtype)
    # A product with the reciprocal, not a division: XLA rewrites x / c that way, and both loops
    # must compute the same bits to draw the same tokens.
    damped = tf.where(logits > 0, logits * (1.0 / penalty), logits * penalty)
    return tf.where(seen, damped, logits)


def _draw(logits, index, temperature, top_k, top_p, seeds, sort=False, min_p=0.0):
    """The token drawn from `logits` `[batch, n_vocab]` as draw number `index` of each row's stream: int32 [batch, 1].

    `seeds` is int64 `[batch, 2]`, each row's (seed, stream row): `row_seeds`. A token's randomness
    depends only on those and its index, not on chunking, on which loop draws it or
    on the other rows of the batch. `index` is an int64 scalar, or `[batch, 1]`: one a row (a row
    that joined a running batch counts its own draws). The options are `filter_logits`' (scalars or one a row).
    """
    scaled, kept = _scale_and_keep(logits, temperature, top_k, top_p, min_p, sort=sort)
    # The Gumbel-max trick: argmax(logits + Gumbel noise) is a draw from softmax(logits). Unlike
    # tf.random.stateless_categorical it compiles under XLA, and the noise is integer arithmetic
    # (TF's own Philox gives other bits under XLA), so both loops draw the same tokens. The noise is
    # finite, and a token a filter removed is -inf here: it cannot be drawn whatever the noise.
    noisy = scaled + _gumbel(_uniform(seeds, index, logits.shape[-1]))
    return tf.cast(tf.argmax(tf.where(kept, noisy, -float("inf")), axis=-1), tf.int32)[:, None]


def batch_seed(seed, b=0):
    """The seed of batch `b` of a `generate(seed=seed)` call (None: a fresh seed), so batches differ."""
    return None if seed is None else int(seed) * 1_000_003 + b


def row_seeds(seed, batch):
    """int64 `[batch, 2]`: the rows of one call seeded with `seed` (None: a fresh seed), streams 0..batch-1 (`generate`'s draws)."""
    seed = np.random.default_rng().integers(2**62) if seed is None else seed
    return np.stack([np.full(batch, seed, np.int64), np.arange(batch, dtype=np.int64)], axis=1)


def _gumbel(uniform):
    """Standard Gumbel noise from uniforms in (0, 1): finite, within [-2.8, 16.7] for `_to_uniform`'s values."""
    return -tf.math.log(-tf.math.log(uniform))


_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2**64 / the golden ratio


def _mix(x):
    """SplitMix64's finaliser: a bijection of uint64 whose outputs look independent."""
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(shift, tf.uint64)))
        x = x * tf.constant(multiplier, tf.uint64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, tf.uint64)))


def _uniform(seeds, index, n_vocab):
    """float32 uniforms in (0, 1) `[batch, n_vocab]`, row r a pure function of (seeds[r], index).

    SplitMix64 in counter mode: element j of a row of stream row s, at draw `index`, is
    mix(stream + (s * n_vocab + j + 1) * golden), stream = mix(seed + index * golden). The rows of
    one seed are one stream, as if a batch were one long row; integer ops give the same bits with and without XLA.
    """
    golden = tf.constant(_GOLDEN, tf.uint64)
    seed, row = tf.bitcast(seeds[:, :1], tf.uint64), tf.bitcast(seeds[:, 1:], tf.uint64)  # [batch, 1]
    stream = _mix(seed + tf.bitcast(tf.cast(index, tf.int64), tf.uint64) * golden)
    counters = row * n_vocab + tf.cast(tf.range(n_vocab), tf.uint64)[None, :] + 1
    return _to_uniform(_mix(stream + counters * golden))


def _to_uniform(bits):
    """uint64 random bits -> float32 uniforms strictly inside (0, 1), from the top 23 bits.

    (top + 0.5) / 2**23 is exact in float32 (24 significant bits) for every top < 2**23: the
    largest value is 1 - 2**-24, never 1.0. With 24 bits, (2**24 - 0.5) / 2**24 rounded to 1.0,
    whose noise is +inf: one entry in 2**24 then won the draw whatever its logit.
    """
    top = tf.bitwise.right_shift(bits, tf.constant(41, tf.uint64))
    return (tf.cast(top, tf.float32) + 0.5) * (1.0 / 2**23)


class Steer:
    """Penalties, logit bias, filters and stop sequences inside a compiled loop (a plain helper, traced)."""

    def __init__(self, n_vocab, knobs):
        self.n_vocab, self.knobs = n_vocab, knobs

    def draw(self, logits, steering, index, seeds, sort=False):
        """Draw number `index` of each row's stream (`_draw`) from the model's `logits` `[batch, n_vocab]`: int32 `[batch, 1]`.

        Every per-step change to the logits happens here: `adjust_logits`, the copy guard
        (a banned token's logit is -inf, before the filters), then the filters.
        """
        k, tail = self.knobs, steering.tail
        adjusted = adjust_logits(logits, steering.seen, steering.counts,
                                 (k.repetition_penalty, k.presence_penalty, k.frequency_penalty, k.logit_bias))
        adjusted = tf.cond(
            k.avoid_copies > 0,
            lambda: tf.where(banned(tail, k.avoid_copies, k.guard_keys, k.guard_nexts, self.n_vocab),
                             -float("inf"), adjusted),
            lambda: adjusted)
        return _draw(adjusted, index, k.temperature, k.top_k, k.top_p, seeds, sort=sort, min_p=k.min_p)

    def update(self, token, steering):
        """After drawing `token` [batch, 1]: the `Steering` that includes it."""
        recent = tf.concat([steering.recent[:, 1:], token], axis=1)
        return Steering(seen=steering.seen | tf.equal(tf.range(self.n_vocab)[None, :], token),
                        recent=recent,
                        counts=steering.counts + tf.one_hot(token[:, 0], self.n_vocab, dtype=steering.counts.dtype),
                        tail=tf.concat([steering.tail[:, 1:], token], axis=1),
                        ended=steering.ended | tf.reduce_any(stop_hits(recent, self.knobs.stops), axis=-1))
