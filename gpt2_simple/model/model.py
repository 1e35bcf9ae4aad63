"""GPT-2 as a `tf.Module`: the math from token ids to next-token logits.

This module owns the forward pass: token and position embeddings, pre-LayerNorm transformer
blocks (masked multi-head self-attention with a key/value cache, tanh-GELU MLP), the final
LayerNorm and the output projection tied to the token embedding. Each variable is registered
under its OpenAI checkpoint name (`model/h0/attn/c_attn/w`, ...) in `GPT2.weights`; reading and
writing those names is `checkpoint.py`'s job, sampling is `sample.py`'s.

Weights of the `conv1d` layers are stored here as `[nx, nf]`; OpenAI's checkpoints hold them as
`[1, nx, nf]`, and `checkpoint.py` reshapes on the way in and out.
"""
import math

import numpy as np
import tensorflow as tf

from tensorflow.compiler.tf2xla.python import xla  # DynamicUpdateSlice (no public TF name): caches of fixed size

from . import lora
from .hparams import check_tokens

LAYER_NORM_EPSILON = 1e-5
_MASKED = -1e10  # the score OpenAI's attention gives to masked (future) positions


def normal_init(seed=None):
    """An initialiser with OpenAI's scheme: N(0, 0.02) weights, N(0, 0.01) for wpe, g=1, b=0."""
    rng = np.random.default_rng(seed)

    def init(name, shape):
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "g":
            return np.ones(shape, np.float32)
        if leaf == "b":
            return np.zeros(shape, np.float32)
        stddev = 0.01 if leaf == "wpe" else 0.02
        return rng.normal(0.0, stddev, size=shape).astype(np.float32)

    return init


class _Layer(tf.Module):
    """A module whose variables are created by `init(name, shape)` and registered by full name."""

    def __init__(self, scope, registry, init):
        super().__init__(name=scope.rsplit("/", 1)[-1])
        self._scope = scope
        self._registry = registry
        self._init = init

    def _weight(self, leaf, shape):
        name = f"{self._scope}/{leaf}"
        value = self._init(name, tuple(shape))  # an array, or a ready variable (a frozen 16-bit base: lora.py)
        variable = value if isinstance(value, tf.Variable) else tf.Variable(value, dtype=tf.float32, name=leaf)
        self._registry[name] = variable
        return variable


class LayerNorm(_Layer):
    def __init__(self, scope, registry, init, n_embd):
        super().__init__(scope, registry, init)
        self.g = self._weight("g", [n_embd])
        self.b = self._weight("b", [n_embd])

    def __call__(self, x):
        # Statistics in float32 even when the rest runs in float16/bfloat16.
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        return tf.cast((x32 - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) * self.g + self.b, x.dtype)


class Conv1D(_Layer):
    """OpenAI's `conv1d`: a dense layer applied to every position, `x @ w + b`."""

    def __init__(self, scope, registry, init, nx, nf):
        super().__init__(scope, registry, init)
        self.w = self._weight("w", [nx, nf])
        self.b = self._weight("b", [nf])

    def __call__(self, x):
        nf = self.w.shape[-1]
        leading = tf.shape(x)[:-1]
        w, b = lora.cast_on_use(self.w, x), lora.cast_on_use(self.b, x)  # stored weights, compute in x's dtype
        y = tf.matmul(tf.reshape(x, [-1, self.w.shape[0]]), w) + b  # [batch*seq, nf]
        return tf.reshape(y, tf.concat([leading, [nf]], axis=0))


def gelu(x):
    """OpenAI's tanh approximation of GELU (what the checkpoints were trained with)."""
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


class Attention(_Layer):
    def __init__(self, scope, registry, init, hparams):
        super().__init__(scope, registry, init)
        self.n_head = hparams.n_head
        self.c_attn = Conv1D(f"{scope}/c_attn", registry, init, hparams.n_embd, 3 * hparams.n_embd)
        self.c_proj = Conv1D(f"{scope}/c_proj", registry, init, hparams.n_embd, hparams.n_embd)

    def _split_heads(self, x):
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, seq, self.n_head, x.shape[-1] // self.n_head])
        return tf.transpose(x, [0, 2, 1, 3])  # [batch, n_head, seq, head_dim]

    def _merge_heads(self, x):
        batch, seq = tf.shape(x)[0], tf.shape(x)[2]
        x = tf.transpose(x, [0, 2, 1, 3])  # [batch, seq, n_head, head_dim]
        return tf.reshape(x, [batch, seq, self.n_head * x.shape[-1]])

    def __call__(self, x, past=None):
        """(output, present): `present` holds the keys and values of `x`'s positions only."""
        past_k, past_v = (None, None) if past is None else tf.unstack(past, axis=1)
        out, k, v = self.attend(x, past_k, past_v)
        seq = tf.shape(x)[1]
        return out, tf.stack([k[:, :, -seq:], v[:, :, -seq:]], axis=1)  # [batch, 2, n_head, seq, head_dim]

    def attend(self, x, past_k=None, past_v=None):
        """(output, keys, values), the keys and values covering the past and `x`: [batch, n_head, past+seq, head_dim]."""
        q, k, v = tf.split(self.c_attn(x), 3, axis=-1)  # 3 x [batch, seq, n_embd]
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if past_k is not None:
            k = tf.concat([past_k, k], axis=-2)  # [batch, n_head, past+seq, head_dim]
            v = tf.concat([past_v, v], axis=-2)
        # Query i (at absolute position past+i) sees keys 0..past+i: the mask is aligned to
        # the lower right so that cached keys stay visible.
        n_q, n_k = tf.shape(q)[-2], tf.shape(k)[-2]
        visible = tf.range(n_q)[:, None] + (n_k - n_q) >= tf.range(n_k)[None, :]  # [seq, past+seq]
        return self._attention(q, k, v, visible), k, v

    def attend_fixed(self, x, k_cache, v_cache, start):
        """`attend` with caches of a fixed length (a window) written in place at `start` (for XLA).

        Args:
            x: `[batch, seq, n_embd]` at positions start..start+seq-1.
            k_cache, v_cache: `[batch * n_head, window, head_dim]`; positions >= start are ignored.
            start: int32 scalar.
        """
        q, k, v = (tf.reshape(self._split_heads(t), [-1, tf.shape(t)[1], t.shape[-1] // self.n_head])
                   for t in tf.split(self.c_attn(x), 3, axis=-1))  # 3 x [batch * n_head, seq, head_dim]
        at = tf.stack([0, start, 0])
        # In place in an XLA loop because the write and the matmuls see one 3-D shape (4-D: copied every step).
        k_cache = xla.dynamic_update_slice(k_cache, k, at)
        v_cache = xla.dynamic_update_slice(v_cache, v, at)
        visible = (start + tf.range(tf.shape(q)[-2]))[:, None] >= tf.range(tf.shape(k_cache)[-2])[None, :]
        return self._attention(q, k_cache, v_cache, visible, tf.shape(x)[0]), k_cache, v_cache

    def _attention(self, q, k, v, visible, batch=None):
        """Masked softmax attention, merged and projected: [batch, seq, n_embd] (q, k, v 4-D, or 3-D with `batch`)."""
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(q.shape[-1]))
        scores = tf.where(visible, tf.cast(scores, tf.float32), _MASKED)  # softmax in float32
        a = tf.matmul(tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype), v)  # q's shape
        a = a if batch is None else tf.reshape(a, [batch, self.n_head, tf.shape(a)[-2], a.shape[-1]])
        return self.c_proj(self._merge_heads(a))


class MLP(_Layer):
    def __init__(self, scope, registry, init, n_embd):
        super().__init__(scope, registry, init)
        self.c_fc = Conv1D(f"{scope}/c_fc", registry, init, n_embd, 4 * n_embd)
        self.c_proj = Conv1D(f"{scope}/c_proj", registry, init, 4 * n_embd, n_embd)

    def __call__(self, x):
        return self.c_proj(gelu(self.c_fc(x)))


class Block(_Layer):
    def __init__(self, scope, registry, init, hparams):
        super().__init__(scope, registry, init)
        self.ln_1 = LayerNorm(f"{scope}/ln_1", registry, init, hparams.n_embd)
        self.attn = Attention(f"{scope}/attn", registry, init, hparams)
        self.ln_2 = LayerNorm(f"{scope}/ln_2", registry, init, hparams.n_embd)
        self.mlp = MLP(f"{scope}/mlp", registry, init, hparams.n_embd)

    def __call__(self, x, past=None):
        a, present = self.attn(self.ln_1(x), past)
        return self._finish(x, a), present

    def attend(self, x, keys=None, values=None):
        a, keys, values = self.attn.attend(self.ln_1(x), keys, values)
        return self._finish(x, a), keys, values

    def attend_fixed(self, x, keys, values, start):
        a, keys, values = self.attn.attend_fixed(self.ln_1(x), keys, values, start)
        return self._finish(x, a), keys, values

    def _finish(self, x, a):
        x = x + a
        return x + self.mlp(self.ln_2(x))


class GPT2(tf.Module):
    """GPT-2 language model.

    Args:
        hparams: an `HParams`.
        init: `init(name, shape) -> np.ndarray` giving the initial value of each variable by its
            OpenAI name; defaults to OpenAI's random initialisation (`normal_init(seed)`).
        seed: seed of the default random initialisation.

    Attributes:
        hparams: the `HParams` it was built with.
        weights: dict from OpenAI checkpoint name to `tf.Variable`, in checkpoint order.
        checkpoint_path: the file or bundle prefix the weights were read from (`formats/`), or None.
        lora_base: while LoRA trains, the (model folder, checkpoint) its base was read from, or None.
    """

    def __init__(self, hparams, *, init=None, seed=None):
        super().__init__(name="model")
        self.hparams = hparams
        init = init or normal_init(seed)
        self.weights = {}
        root = _Layer("model", self.weights, init)
        self.wte = root._weight("wte", [hparams.n_vocab, hparams.n_embd])
        self.wpe = root._weight("wpe", [hparams.n_ctx, hparams.n_embd])
        self.h = [Block(f"model/h{i}", self.weights, init, hparams) for i in range(hparams.n_layer)]
        self.ln_f = LayerNorm("model/ln_f", self.weights, init, hparams.n_embd)
        self.checkpoint_path = None
        self.lora_base = None

    def forward(self, tokens, past=None):
        """Run the model on `tokens`, continuing after the cached `past`.

        Args:
            tokens: int `[batch, seq]`.
            past: float32 `[batch, n_layer, 2, n_head, past_len, head_dim]`, the `present` of
                the earlier tokens, or None when `tokens` start at position 0.

        Returns:
            (logits, present): float32 `[batch, seq, n_vocab]` and the keys and values of
            `tokens`, `[batch, n_layer, 2, n_head, seq, head_dim]`, to concatenate onto `past`
            (axis -2) for the next call.
        """
        tokens = tf.convert_to_tensor(tokens)
        tokens = tf.cast(tokens, tf.int32) if tokens.dtype != tf.int32 else tokens
        past_len = 0 if past is None else tf.shape(past)[-2]
        positions = past_len + tf.range(tf.shape(tokens)[1])
        x = self._embed(tokens, positions)  # [batch, seq, n_embd]
        pasts = [None] * len(self.h) if past is None else tf.unstack(past, len(self.h), axis=1)
        presents = []
        for block, layer_past in zip(self.h, pasts):
            x, present = block(x, layer_past)
            presents.append(present)
        return self._logits(x), tf.stack(presents, axis=1)

    def train_logits(self, tokens, *, dtype=tf.float32, recompute=False, features=False):
        """Logits for training: no cache, optional low-precision compute and recomputation.

        Args:
            tokens: int32 `[batch, seq]` starting at position 0.
            dtype: the compute dtype (float32, float16 or bfloat16); weights stay float32 and
                are cast on use, LayerNorm and softmax run in float32.
            recompute: keep only each block's input for the backward pass and recompute the
                block there (`tf.recompute_grad`): activation memory drops from all blocks'
                intermediates to one block's, for about a third more compute.
            features: return the final LayerNorm's output `[batch, seq, n_embd]` (the chunked loss's input).

        Returns:
            float32 `[batch, seq, n_vocab]`.
        """
        positions = tf.range(tf.shape(tokens)[1])
        x = tf.cast(self._embed(tokens, positions), dtype)  # [batch, seq, n_embd]
        for block in self.h:
            run = (lambda x, block=block: block.attend(x)[0])
            x = tf.recompute_grad(run)(x) if recompute else run(x)
        return self.ln_f(x) if features else self._logits(x)

    def forward_cached(self, tokens, keys, values):
        """`forward` for decoding loops: per-layer caches in, the grown caches out.

        Args:
            tokens: int32 `[batch, seq]`, following the cached positions.
            keys, values: lists of n_layer float32 `[batch, n_head, past_len, head_dim]`.

        Returns:
            (logits `[batch, seq, n_vocab]`, keys, values), the caches now covering `tokens`
            too. Unlike `forward`, the caches are not stacked and unstacked on every call.
        """
        positions = tf.shape(keys[0])[-2] + tf.range(tf.shape(tokens)[1])
        x = self._embed(tokens, positions)  # [batch, seq, n_embd]
        new_keys, new_values = [], []
        for block, k, v in zip(self.h, keys, values):
            x, k, v = block.attend(x, k, v)
            new_keys.append(k)
            new_values.append(v)
        return self._logits(x), new_keys, new_values

    def forward_fixed(self, tokens, keys, values, start):
        """`forward_cached` with preallocated caches, for decoding loops compiled by XLA.

        The caches keep one shape (a window of positions, up to n_ctx) for the whole loop and each
        step writes its keys and values in place, so a step costs the same at every position and
        XLA compiles the loop once per batch size and window. The ops used need XLA (`jit_compile=True`).

        Args:
            tokens: int32 `[batch, seq]` at positions start..start+seq-1.
            keys, values: lists of n_layer float32 `[batch * n_head, window, head_dim]`.
            start: int32 scalar, the position of `tokens[:, 0]`.

        Returns:
            (logits `[batch, seq, n_vocab]`, keys, values) with `tokens`' positions written.
        """
        positions = start + tf.range(tf.shape(tokens)[1])
        x = self._embed(tokens, positions)  # [batch, seq, n_embd]
        new_keys, new_values = [], []
        for block, k, v in zip(self.h, keys, values):
            x, k, v = block.attend_fixed(x, k, v, start)
            new_keys.append(k)
            new_values.append(v)
        return self._logits(x), new_keys, new_values

    def _embed(self, tokens, positions):
        """Token plus position embeddings in float32 (also when the tables are stored in 16 bits)."""
        return tf.cast(tf.gather(self.wte, tokens), tf.float32) + tf.cast(tf.gather(self.wpe, positions), tf.float32)

    def _logits(self, x):
        """Final LayerNorm and the output projection tied to wte: [batch, seq, n_vocab]."""
        x = self.ln_f(x)
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        logits = tf.matmul(tf.reshape(x, [-1, self.hparams.n_embd]), lora.cast_on_use(self.wte, x), transpose_b=True)
        return tf.cast(tf.reshape(logits, [batch, seq, self.hparams.n_vocab]), tf.float32)

    # Low-rank adapters over frozen weights (lora.py): model.enable_lora(8, base_precision='bfloat16').
    enable_lora = lora.enable_lora
    merge_lora = lora.merge_lora
    lora = None  # the adapters' LoRAConfig once enabled (`lora_weights` then holds them by name)

    def __call__(self, tokens):
        """Logits for `tokens`: int `[batch, seq]` (numpy or tensor) -> float32 `[batch, seq, n_vocab]`.

        Raises:
            ValueError: (eagerly) tokens that are not `[batch, seq]`, longer than `n_ctx`, or
                ids outside the vocabulary.
        """
        if tf.executing_eagerly():
            check_tokens(tokens, self.hparams)
        return self.forward(tokens)[0]
