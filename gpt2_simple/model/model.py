"""GPT-2 as a `tf.Module`: the math from token ids to next-token logits.

This module owns the forward pass: token and position embeddings, pre-LayerNorm transformer
blocks (masked multi-head self-attention with a key/value cache, tanh-GELU MLP), the final
LayerNorm and the output projection tied to the token embedding. Each variable is registered
under its OpenAI checkpoint name (`model/h0/attn/c_attn/w`, ...) in `GPT2.weights`; reading and
writing those names is `checkpoint.py`'s job, sampling is `sample.py`'s.

Weights of the `conv1d` layers are stored here as `[nx, nf]`; OpenAI's checkpoints hold them as
`[1, nx, nf]`, and `checkpoint.py` reshapes on the way in and out.
"""
import numpy as np
import tensorflow as tf

from . import lora
from .hparams import check_tokens
from .ops import attend, gelu_matmul, layer_norm, norm_matmul, write_at


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
        return layer_norm(x, self.g, self.b)  # statistics in float32 even when the rest runs in 16 bits


class Conv1D(_Layer):
    """OpenAI's `conv1d`: a dense layer applied to every position, `x @ w + b`."""

    def __init__(self, scope, registry, init, nx, nf):
        super().__init__(scope, registry, init)
        self.w = self._weight("w", [nx, nf])
        self.b = self._weight("b", [nf])

    def __call__(self, x, rows=None, gelu_first=False, norm=None):
        """`x @ w + b` for `x` `[..., nx]`; `rows`: None, or each row's adapter (A `[batch, nx, r]`, B `[batch, r, nf]`,
        `adapter_rows.py`), whose `(x @ A) @ B` is added row by row (x is then `[batch, seq, nx]`).
        `gelu_first` / `norm` (a `LayerNorm`): `gelu(x) @ w + b` / `norm(x) @ w + b`, whose backward pass recomputes
        gelu(x) / norm(x) (`ops.gelu_matmul`, `ops.norm_matmul`)."""
        nf = self.w.shape[-1]
        leading = tf.shape(x)[:-1]
        w, b = lora.cast_on_use(self.w, x), lora.cast_on_use(self.b, x)  # stored weights, compute in x's dtype
        flat, w = tf.reshape(x, [-1, self.w.shape[0]]), tf.convert_to_tensor(w)
        if norm is not None:
            product = norm_matmul(flat, tf.convert_to_tensor(norm.g), tf.convert_to_tensor(norm.b), w)
        else:
            product = gelu_matmul(flat, w) if gelu_first else tf.matmul(flat, w)
        # `- (-b)`, not `+ b` (the same bits): XLA's CPU backend fuses an added bias into a matrix-vector
        # product (batch 1 decoding) and then runs the product on one core.
        y = tf.reshape(product - tf.negative(b), tf.concat([leading, [nf]], 0))
        return y if rows is None else y + lora.row_update(lora.first(x, gelu_first, norm), rows)


class Attention(_Layer):
    def __init__(self, scope, registry, init, hparams):
        super().__init__(scope, registry, init)
        self.n_head = hparams.n_head
        self.c_attn = Conv1D(f"{scope}/c_attn", registry, init, hparams.n_embd, 3 * hparams.n_embd)
        self.c_proj = Conv1D(f"{scope}/c_proj", registry, init, hparams.n_embd, hparams.n_embd)

    def _heads(self, x):
        """[batch, seq, n_embd] -> [batch * n_head, seq, head_dim]: the layout of the caches."""
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, seq, self.n_head, x.shape[-1] // self.n_head])
        return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [batch * self.n_head, seq, x.shape[-1]])

    def _merge_heads(self, x, batch):
        """[batch * n_head, seq, head_dim] -> [batch, seq, n_embd]."""
        seq = tf.shape(x)[1]
        x = tf.transpose(tf.reshape(x, [batch, self.n_head, seq, x.shape[-1]]), [0, 2, 1, 3])
        return tf.reshape(x, [batch, seq, self.n_head * x.shape[-1]])

    def __call__(self, x, keys=None, values=None, start=None, pads=None, segments=None, adapters=None, norm=None):
        """Self-attention of `x` over the cached positions and its own: (output, keys, values).

        Args:
            x: `[batch, seq, n_embd]`.
            keys, values: the caches, `[batch * n_head, cached, head_dim]`, or None (no past).
            start: None to append `x`'s keys and values to the caches (they grow, and `x` starts
                at position `cached`); or an int32 scalar to write them in place at positions
                start..start+seq-1 of caches of a fixed window, whose later positions are ignored
                (XLA's decoding loop: one shape for the whole loop, written without a copy).
            pads: None, or int32 `[batch]`: each row's count of left padding, the cache positions
                its queries never see (a batch of prompts of different lengths).
            segments: None, or int32 `[batch, seq]` without caches: a query sees only keys of its
                own segment (packed training windows: examples that never see each other).
            adapters: None, or the rows' adapters of (c_attn, c_proj): see `Conv1D.__call__`.
            norm: None, or the `LayerNorm` to apply to `x` first (its output is recomputed in the backward pass).

        Returns:
            (`[batch, seq, n_embd]`, keys, values), the caches now holding `x`'s positions.
        """
        rows = adapters or (None, None)
        q, k, v = (self._heads(t) for t in tf.split(self.c_attn(x, rows[0], norm=norm), 3, axis=-1))  # [batch * n_head, seq, head_dim]
        if start is None:
            if keys is not None:
                k, v = tf.concat([keys, k], axis=1), tf.concat([values, v], axis=1)
            start = tf.shape(k)[1] - tf.shape(q)[1]
        else:
            k, v = write_at(keys, k, start), write_at(values, v, start)
        out = attend(q, k, v, start, pads, self.n_head, segments, keep=keys is not None)
        return self.c_proj(self._merge_heads(out, tf.shape(x)[0]), rows[1]), k, v


class MLP(_Layer):
    def __init__(self, scope, registry, init, n_embd):
        super().__init__(scope, registry, init)
        self.c_fc = Conv1D(f"{scope}/c_fc", registry, init, n_embd, 4 * n_embd)
        self.c_proj = Conv1D(f"{scope}/c_proj", registry, init, 4 * n_embd, n_embd)

    def __call__(self, x, adapters=None, norm=None):
        rows = adapters or (None, None)  # the rows' adapters of (c_fc, c_proj): see `Conv1D.__call__`
        return self.c_proj(self.c_fc(x, rows[0], norm=norm), rows[1], gelu_first=True)


class Block(_Layer):
    def __init__(self, scope, registry, init, hparams):
        super().__init__(scope, registry, init)
        self.ln_1 = LayerNorm(f"{scope}/ln_1", registry, init, hparams.n_embd)
        self.attn = Attention(f"{scope}/attn", registry, init, hparams)
        self.ln_2 = LayerNorm(f"{scope}/ln_2", registry, init, hparams.n_embd)
        self.mlp = MLP(f"{scope}/mlp", registry, init, hparams.n_embd)

    def __call__(self, x, keys=None, values=None, start=None, pads=None, segments=None, adapters=None):
        """(output, keys, values): see `Attention.__call__`; `adapters`: None, or the rows' adapters of the
        block's four matrices (c_attn, attn c_proj, c_fc, mlp c_proj), `adapter_rows.AdapterTable.rows`'."""
        rows = adapters or (None,) * 4
        a, keys, values = self.attn(x, keys, values, start, pads, segments, rows[:2], norm=self.ln_1)
        x = x + a
        return x + self.mlp(x, rows[2:], norm=self.ln_2), keys, values


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
        lora: the adapters' `LoRAConfig` once `enable_lora` has run, None without adapters.
        lora_weights: the adapters' variables by name (`model/h0/attn/c_attn/lora_A`, ...); {} without.
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
        self.lora = None
        self.lora_weights = {}
        self.lora_base = None

    def forward(self, tokens, keys=None, values=None, start=None, pads=None, last_only=False, adapters=None):
        """Logits for `tokens`, continuing after the cached positions: the one cached forward pass.

        Args:
            tokens: int `[batch, seq]`.
            keys, values: lists of n_layer float32 caches `[batch * n_head, cached, head_dim]`, or
                None when `tokens` start at position 0.
            start: None to grow the caches by `tokens`' positions (they follow the cached ones);
                or an int32 scalar, the position of `tokens[:, 0]`, to write them in place into
                caches of a fixed window (XLA's decoding loop; see `Attention.__call__`).
            pads: None, or int32 `[batch]`: each row starts after that many left-padding positions,
                which it never attends to; its real tokens take positions from 0 (a row equals its
                own unpadded forward pass).
            last_only: the logits of the last position only (`[batch, 1, n_vocab]`): decoding
                needs no others, and a prompt's output projection is a quarter of 124M's work.
            adapters: None, or each row's LoRA adapter, one entry a block
                (`adapter_rows.AdapterTable.rows`): several fine-tunes of this base in one batch.

        Returns:
            (logits float32 `[batch, seq, n_vocab]`, keys, values), the caches now holding `tokens`.
        """
        tokens = tf.convert_to_tensor(tokens)
        tokens = tf.cast(tokens, tf.int32) if tokens.dtype != tf.int32 else tokens
        keys, values = keys or [None] * len(self.h), values or [None] * len(self.h)
        first = start if start is not None else (0 if keys[0] is None else tf.shape(keys[0])[1])
        positions = first + tf.range(tf.shape(tokens)[1])  # [seq]
        if pads is not None:  # [batch, seq]; a padding slot's position is 0 (nothing sees it)
            positions = tf.maximum(positions[None, :] - pads[:, None], 0)
        x = self.embed(tokens, positions)  # [batch, seq, n_embd]
        new_keys, new_values = [], []
        for block, k, v, rows in zip(self.h, keys, values, adapters or [None] * len(self.h)):
            x, k, v = block(x, k, v, start, pads, adapters=rows)
            new_keys.append(k)
            new_values.append(v)
        return self.output_logits(x[:, -1:] if last_only else x), new_keys, new_values

    def train_logits(self, tokens, *, dtype=tf.float32, recompute=False, features=False, positions=None,
                     segments=None):
        """Logits for training: no cache, optional low-precision compute and recomputation.

        Args:
            tokens: int32 `[batch, seq]` starting at position 0.
            dtype: the compute dtype (float32, float16 or bfloat16); weights stay float32 and
                are cast on use, LayerNorm and softmax run in float32.
            recompute: keep only each block's input for the backward pass and recompute the
                block there (`tf.recompute_grad`): activation memory drops from all blocks'
                intermediates to one block's, for about a third more compute.
            features: return the final LayerNorm's output `[batch, seq, n_embd]` (the chunked loss's input).
            positions, segments: None, or int32 `[batch, seq]` for packed windows: each token's
                position in its example and the example it belongs to (attention stays inside it).

        Returns:
            float32 `[batch, seq, n_vocab]`.
        """
        positions = tf.range(tf.shape(tokens)[1]) if positions is None else positions
        x = tf.cast(self.embed(tokens, positions), dtype)  # [batch, seq, n_embd]
        for block in self.h:
            run = (lambda x, block=block: block(x, segments=segments)[0])
            x = tf.recompute_grad(run)(x) if recompute else run(x)
        return self.ln_f(x) if features else self.output_logits(x)

    def embed(self, tokens, positions):
        """Token plus position embeddings in float32 (also when the tables are stored in 16 bits).

        The model's first step, shared by `forward`, `train_logits` and `columns.step`.

        Args:
            tokens: int32 `[batch, seq]` (or `[batch]` for one position a row).
            positions: int32 `[seq]`, or `[batch, seq]` (`[batch]`) for rows with their own positions.

        Returns:
            float32 `[batch, seq, n_embd]` (`[batch, n_embd]`).
        """
        return tf.cast(tf.gather(self.wte, tokens), tf.float32) + tf.cast(tf.gather(self.wpe, positions), tf.float32)

    def output_logits(self, x):
        """The model's last step, shared by `forward`, `train_logits` and `columns.step`.

        Args:
            x: the last block's output `[batch, seq, n_embd]`, in the compute dtype.

        Returns:
            float32 `[batch, seq, n_vocab]`: the final LayerNorm, then the output projection tied to wte.
        """
        return self.project(self.ln_f(x))

    def project(self, x):
        """The output projection tied to wte: features `[batch, seq, n_embd]` -> float32 logits `[batch, seq, n_vocab]`."""
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        logits = tf.matmul(tf.reshape(x, [-1, self.hparams.n_embd]), lora.cast_on_use(self.wte, x), transpose_b=True)
        return tf.cast(tf.reshape(logits, [batch, seq, self.hparams.n_vocab]), tf.float32)

    # Low-rank adapters over frozen weights (lora.py): model.enable_lora(8, base_precision='bfloat16').
    enable_lora = lora.enable_lora
    merge_lora = lora.merge_lora

    def __call__(self, tokens):
        """Logits for `tokens`: int `[batch, seq]` (numpy or tensor) -> float32 `[batch, seq, n_vocab]`.

        Raises:
            ValueError: (eagerly) tokens that are not `[batch, seq]`, longer than `n_ctx`, or
                ids outside the vocabulary.
        """
        if tf.executing_eagerly():
            check_tokens(tokens, self.hparams)
        return self.forward(tokens)[0]
