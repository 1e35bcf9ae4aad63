"""Sampling tokens from GPT-2: logit filters and the compiled decoding loop.

This module owns turning a model and a prompt into new token ids: temperature, top-k and
nucleus (top-p) filtering, reproducible draws from a seed, and a decoding loop compiled once per
model with `tf.function` (input shapes with `None` lengths, so a new prompt length, batch size or
number of tokens does not retrace). Text, prompts as strings and truncation are `generate.py`'s.

Longer outputs than the context are produced in chunks by `Sampler.sample`: when the cache is
full, the newest half of the context becomes the new prompt (a sliding window).
"""
import numpy as np
import tensorflow as tf

_FILTERED = -1e10  # the logit given to tokens a filter removes (OpenAI's value; never NaN)


def filter_logits(logits, temperature, top_k, top_p):
    """Scale and filter `[batch, n_vocab]` logits.

    Args:
        logits: float32 `[batch, n_vocab]`.
        temperature: > 0; logits are divided by it.
        top_k: keep the k largest logits; 0 keeps all.
        top_p: if > 0, keep the smallest set of tokens whose probability reaches top_p
            (nucleus sampling); as in gpt-2-simple it then replaces top_k.

    Returns:
        float32 `[batch, n_vocab]`; at least one token per row keeps its (scaled) logit.
    """
    logits = logits / tf.cast(temperature, logits.dtype)
    top_k = tf.cast(top_k, tf.int32)
    top_p = tf.cast(top_p, logits.dtype)

    def keep_top_k():
        kth = tf.math.top_k(logits, k=tf.minimum(top_k, tf.shape(logits)[-1])).values[:, -1:]
        return tf.where(logits < kth, _FILTERED, logits)

    def keep_top_p():
        ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
        before = tf.cumsum(tf.nn.softmax(ordered, axis=-1), axis=-1, exclusive=True)
        # The token whose preceding mass is still below top_p is the last one kept (always >= 1).
        n_kept = tf.maximum(tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1), 1)
        threshold = tf.gather(ordered, n_kept - 1, batch_dims=1)[:, None]
        return tf.where(logits < threshold, _FILTERED, logits)

    return tf.case(
        [(top_p > 0.0, keep_top_p), (top_k > 0, keep_top_k)],
        default=lambda: logits,
        exclusive=False,
    )


class Sampler:
    """The compiled decoding loop of one model.

    `sample()` may be called any number of times with any prompt length, batch size and number
    of tokens; the underlying `tf.function` is traced once.
    """

    def __init__(self, model):
        self.model = model
        hp = model.hparams
        cache = [tf.TensorSpec([None, hp.n_head, None, hp.head_dim], tf.float32)] * hp.n_layer
        self._decode = tf.function(
            self._decode_chunk,
            input_signature=[
                tf.TensorSpec([None, None], tf.int32),  # pending: tokens not yet in the cache
                cache,  # keys of every layer so far
                cache,  # values of every layer so far
                tf.TensorSpec([], tf.int32),  # n: tokens to draw
                tf.TensorSpec([], tf.float32),  # temperature
                tf.TensorSpec([], tf.int32),  # top_k
                tf.TensorSpec([], tf.float32),  # top_p
                tf.TensorSpec([2], tf.int64),  # (seed, index of the chunk's first token)
            ],
        )

    @property
    def tracing_count(self):
        return self._decode.experimental_get_tracing_count()

    def _decode_chunk(self, pending, keys, values, n, temperature, top_k, top_p, seed):
        """Feed `pending`, then draw `n` tokens one at a time. Returns (tokens [batch, n], keys, values).

        The last drawn token is not fed: it is the caller's next `pending`.
        """
        cache_shape = tf.TensorShape([None, self.model.hparams.n_head, None, self.model.hparams.head_dim])

        def draw(logits, i):
            # Each token's randomness depends on the seed and its index only, not on chunking.
            filtered = filter_logits(logits[:, -1, :], temperature, top_k, top_p)
            index = seed[1] + tf.cast(i, tf.int64)
            step_seed = tf.random.experimental.stateless_fold_in(tf.stack([seed[0], tf.constant(0, tf.int64)]), index)
            return tf.cast(tf.random.stateless_categorical(filtered, 1, step_seed), tf.int32)  # [batch, 1]

        logits, keys, values = self.model.forward_cached(pending, keys, values)
        token = draw(logits, 0)
        drawn = tf.TensorArray(tf.int32, size=n, element_shape=tf.TensorShape([None]))
        drawn = drawn.write(0, token[:, 0])

        def body(i, token, keys, values, drawn):
            logits, keys, values = self.model.forward_cached(token, keys, values)
            token = draw(logits, i)
            return i + 1, token, keys, values, drawn.write(i, token[:, 0])

        layers = len(keys)
        _, _, keys, values, drawn = tf.while_loop(
            lambda i, *_: i < n,
            body,
            (tf.constant(1), token, keys, values, drawn),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, 1]), [cache_shape] * layers,
                              [cache_shape] * layers, tf.TensorShape(None)),
        )
        return tf.transpose(drawn.stack()), keys, values

    def sample(self, context, length, *, temperature=1.0, top_k=0, top_p=0.0, seed=None,
               chunk=None, stop=None):
        """Draw `length` tokens after `context` for every row.

        Args:
            context: int `[batch, ctx_len]`, ctx_len >= 1 and < n_ctx.
            length: number of new tokens (>= 1); may exceed the context (sliding window).
            temperature, top_k, top_p: see `filter_logits`.
            seed: int for reproducible draws, or None.
            chunk: tokens drawn per compiled call; `stop` is checked between chunks.
            stop: optional `stop(tokens [batch, so_far]) -> bool`; True ends sampling early.

        Returns:
            int32 numpy `[batch, <= length]`: the new tokens only.
        """
        n_ctx = self.model.hparams.n_ctx
        context = np.asarray(context, np.int32)
        batch = context.shape[0]
        seed = int(np.random.default_rng().integers(2**62)) if seed is None else int(seed)
        chunk = int(chunk or length)
        history = context  # every token so far, prompt included
        pending, (keys, values) = context, self._empty_cache(batch)
        out = np.zeros([batch, 0], np.int32)
        while out.shape[1] < length:
            # Feeding `pending` and then n - 1 drawn tokens must fit in the context.
            room = n_ctx - keys[0].shape[-2] - pending.shape[1] + 1
            if room < 1:
                # The context is full: continue from the newest half of the text (sliding window).
                keep = max(n_ctx // 2, 1)
                pending, (keys, values) = history[:, -keep:], self._empty_cache(batch)
                room = n_ctx - keep + 1
            n = min(chunk, length - out.shape[1], room)
            chunk_seed = tf.constant([seed, out.shape[1]], tf.int64)
            tokens, keys, values = self._decode(
                tf.constant(pending), keys, values, tf.constant(n, tf.int32), tf.constant(temperature, tf.float32),
                tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32), chunk_seed,
            )
            tokens = tokens.numpy()
            out = np.concatenate([out, tokens], axis=1)
            history = np.concatenate([history, tokens], axis=1)
            pending = tokens[:, -1:]
            if stop is not None and stop(out):
                break
        return out

    def _empty_cache(self, batch):
        hp = self.model.hparams
        empty = tf.zeros([batch, hp.n_head, 0, hp.head_dim], tf.float32)
        return [empty] * hp.n_layer, [empty] * hp.n_layer
