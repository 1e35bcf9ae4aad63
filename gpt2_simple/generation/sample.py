"""The compiled decoding loops: turning a model and a prompt into new token ids.

This module owns decoding: a loop compiled once per model with `tf.function` (input shapes with
`None` lengths, so a new prompt length, batch size or number of tokens does not retrace), an XLA
loop with preallocated caches for small batches, and the Python driver that chains their chunks.
Filtering logits and drawing a token are `draws.py`'s; text, prompts as strings and truncation
are `generate.py`'s.

Longer outputs than the context are produced in chunks by `Sampler.sample`: when the cache is
full, the newest half of the context becomes the new prompt (a sliding window).
"""
import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from .draws import _draw, filter_logits  # noqa: F401  (filter_logits: part of this module's API)

# Batches up to this size decode with the XLA loop (measured by scripts/benchmark.py).
XLA_MAX_BATCH = 2


class Sampler:
    """The compiled decoding loops of one model.

    `sample()` may be called any number of times with any prompt length, batch size and number
    of tokens; each loop is traced once. Two loops share the same draws (a token's randomness
    depends only on the seed and its index):
    - `decode_chunk`, a `tf.function` whose key/value caches grow by concatenation; it reads the
      prompt, and decodes large batches, where the matrix multiplications dominate;
    - `decode_fixed`, compiled by XLA, with caches preallocated to the full context and written
      in place: one fused program per step, so small batches (bound by reading the weights, not
      by arithmetic) lose the per-op overhead, and a step costs the same at every position.
    """

    def __init__(self, model, *, xla_max_batch=XLA_MAX_BATCH):
        self.model = model
        self.xla_max_batch = xla_max_batch
        hp = model.hparams
        options = [
            tf.TensorSpec([], tf.int32),  # n: tokens to draw
            tf.TensorSpec([], tf.float32),  # temperature
            tf.TensorSpec([], tf.int32),  # top_k
            tf.TensorSpec([], tf.float32),  # top_p
            tf.TensorSpec([2], tf.int64),  # (seed, index of the first token drawn)
        ]
        growing = [tf.TensorSpec([None, hp.n_head, None, hp.head_dim], tf.float32)] * hp.n_layer
        self._decode = tf.function(
            self.decode_chunk,
            input_signature=[tf.TensorSpec([None, None], tf.int32), growing, growing] + options,
        )
        fixed = [tf.TensorSpec([None, hp.n_head, hp.n_ctx, hp.head_dim], tf.float32)] * hp.n_layer
        self._decode_fixed = tf.function(
            self.decode_fixed,
            input_signature=[tf.TensorSpec([None, 1], tf.int32), fixed, fixed, tf.TensorSpec([], tf.int32)] + options,
            jit_compile=True,
        )

    @property
    def tracing_count(self):
        return self._decode.experimental_get_tracing_count() + self._decode_fixed.experimental_get_tracing_count()

    def decode_chunk(self, pending, keys, values, n, temperature, top_k, top_p, seed):
        """Feed `pending`, then draw `n` tokens one at a time. Returns (tokens [batch, n], keys, values).

        The last drawn token is not fed: it is the caller's next `pending`.
        """
        cache_shape = tf.TensorShape([None, self.model.hparams.n_head, None, self.model.hparams.head_dim])

        def draw(logits, i):
            return _draw(logits, i, temperature, top_k, top_p, seed)

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

    def decode_fixed(self, token, keys, values, start, n, temperature, top_k, top_p, seed):
        """Feed `token` (at position `start`) and the tokens it leads to, drawing `n` (<= n_ctx - start).

        Args:
            token: int32 `[batch, 1]`, the last drawn token, not yet in the caches.
            keys, values: n_layer float32 `[batch, n_head, n_ctx, head_dim]`, valid before `start`.

        Returns:
            (int32 `[batch, n_ctx]` whose first `n` columns are the drawn tokens, keys, values).
        """
        batch = tf.shape(token)[0]
        drawn = tf.zeros([batch, self.model.hparams.n_ctx], tf.int32)  # XLA wants fixed shapes

        def body(i, token, keys, values, drawn):
            logits, keys, values = self.model.forward_fixed(token, keys, values, start + i)
            token = _draw(logits, i, temperature, top_k, top_p, seed, sort=True)
            return i + 1, token, keys, values, xla.dynamic_update_slice(drawn, token, tf.stack([0, i]))

        _, _, keys, values, drawn = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), token, keys, values,
                                                                              drawn))
        return drawn, keys, values

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
        context = np.asarray(context, np.int32)
        seed = int(np.random.default_rng().integers(2**62)) if seed is None else int(seed)
        chunk = int(chunk or length)
        options = (tf.constant(temperature, tf.float32), tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32))
        state = _Decoding(history=context, pending=context, caches=self._empty_cache(context.shape[0]),
                          out=np.zeros([context.shape[0], 0], np.int32))
        while state.drawn < length:
            room = self._room(state)
            if room < 1:
                self._slide(state)
                continue
            # Up to the next multiple of `chunk`, where `stop` is checked.
            n = min(chunk - state.drawn % chunk, length - state.drawn, room)
            state.add(self._decode_next(state, n, options, tf.constant([seed, state.drawn], tf.int64)))
            if stop is not None and stop(state.out):
                break
        return state.out

    def _room(self, state):
        """How many tokens the next call may draw: feeding `pending` and n - 1 drawn tokens must fit."""
        cached = state.start if state.start is not None else state.caches[0][0].shape[-2]
        return self.model.hparams.n_ctx - cached - state.pending.shape[1] + 1

    def _slide(self, state):
        """The context is full: continue from the newest half of the text (sliding window)."""
        keep = max(self.model.hparams.n_ctx // 2, 1)
        state.pending, state.caches, state.start = state.history[:, -keep:], self._empty_cache(len(state.history)), None

    def _decode_next(self, state, n, options, chunk_seed):
        """Draw up to `n` tokens with the loop that fits: numpy int32 `[batch, n or 1]`."""
        keys, values = state.caches
        fixed = len(state.pending) <= self.xla_max_batch
        if state.start is None:  # read the prompt (and draw one token, or a chunk without XLA)
            n = 1 if fixed else n
            tokens, keys, values = self._decode(tf.constant(state.pending), keys, values, tf.constant(n), *options,
                                                chunk_seed)
            if fixed:  # from here on, the XLA loop over caches of n_ctx positions
                state.start = keys[0].shape[-2]
                keys, values = self._pad(keys), self._pad(values)
        else:
            tokens, keys, values = self._decode_fixed(tf.constant(state.pending), keys, values,
                                                      tf.constant(state.start), tf.constant(n), *options, chunk_seed)
            tokens, state.start = tokens[:, :n], state.start + n
        state.caches = (keys, values)
        return tokens.numpy()

    def _empty_cache(self, batch):
        hp = self.model.hparams
        empty = tf.zeros([batch, hp.n_head, 0, hp.head_dim], tf.float32)
        return [empty] * hp.n_layer, [empty] * hp.n_layer

    def _pad(self, caches):
        """Growing caches -> caches of n_ctx positions (zeros after the filled ones)."""
        n_ctx = self.model.hparams.n_ctx
        return [tf.pad(c, [[0, 0], [0, 0], [0, n_ctx - c.shape[-2]], [0, 0]]) for c in caches]




@dataclasses.dataclass
class _Decoding:
    """Where one `Sampler.sample` call stands between compiled chunks."""

    history: np.ndarray  # int32 [batch, so_far]: every token so far, prompt included
    pending: np.ndarray  # int32 [batch, p]: fed to the model next, not yet in the caches
    caches: tuple  # (keys, values): n_layer tensors each, growing or of n_ctx positions
    out: np.ndarray  # int32 [batch, drawn]: the new tokens only
    start: int = None  # with fixed caches: the position of `pending`

    @property
    def drawn(self):
        return self.out.shape[1]

    def add(self, tokens):
        self.out = np.concatenate([self.out, tokens], axis=1)
        self.history = np.concatenate([self.history, tokens], axis=1)
        self.pending = tokens[:, -1:]
