"""The functions inside a block: masked attention, LayerNorm and GELU (alone and before a matrix), the cache write.

This module owns the math `model.py`'s layers and `columns.py`'s decoding step share, and the
backward passes training takes through it. Two of them recompute in the backward pass what
automatic differentiation would keep from the forward pass (the activations of a training step
are most of its memory; docs/performance.md): attention's probabilities, GELU's tanh, and the outputs of
LayerNorm and GELU where a matrix product follows them (`norm_matmul`, `gelu_matmul`). Each adds
0 times a value of the backward pass to its inputs there, so XLA (which drops optimization
barriers on CPU) cannot merge the recomputation back into the forward pass and keep it after all.
"""
import math

import tensorflow as tf

_MASKED = -1e10  # the score OpenAI's attention gives to masked (future) positions
LAYER_NORM_EPSILON = 1e-5


def _apart(gradient, *tensors):
    """`tensors` plus 0 times an element of `gradient` (a value of the backward pass): the same numbers, but values
    XLA cannot prove equal to the forward pass's, so its common-subexpression pass cannot merge a recomputation
    from them back into the forward pass (and keep what it computes after all); its CPU compiler drops
    optimization barriers first. A non-finite `gradient` makes them NaN, as their gradients would be anyway."""
    zero = tf.reshape(gradient, [-1])[0] * 0
    return tuple(t + tf.cast(zero, t.dtype) for t in tensors)


def attend(q, k, v, start, pads, n_head, segments=None, keep=True):
    """Masked attention of queries `q` at positions start.. over the caches `k`, `v`: `[batch * n_head, seq, head_dim]`.

    Query i (at position start+i) sees keys 0..start+i, none of its row's `pads` (int32
    `[batch]` or None) left-padding positions, and with `segments` (int32 `[batch, seq]`, no
    cache) only keys of its own segment. The softmax runs in float32. `keep=False` (training): the
    backward pass recomputes the probabilities rather than keeping them (`_attention_recomputed`).
    """
    slots = tf.range(tf.shape(k)[1])
    visible = (start + tf.range(tf.shape(q)[1]))[:, None] >= slots[None, :]  # [seq, cached+seq]
    if pads is not None:  # [batch * n_head, seq, cached+seq]
        visible = visible & tf.repeat(slots[None, :] >= pads[:, None], n_head, axis=0)[:, None, :]
    if segments is not None:  # [batch * n_head, seq, seq]: a block-diagonal mask
        visible = visible & tf.repeat(tf.equal(segments[:, :, None], segments[:, None, :]), n_head, axis=0)
    if keep:
        return tf.matmul(tf.cast(_probabilities(q, k, visible), v.dtype), v)
    return _attention_recomputed(q, k, v, visible)


def _probabilities(q, k, visible):
    """Float32 `[batch * n_head, seq, keys]`: softmax over the keys `visible` to each query of q k^T / sqrt(head_dim)."""
    scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(q.shape[-1]))
    return tf.nn.softmax(tf.where(visible, tf.cast(scores, tf.float32), _MASKED), axis=-1)


@tf.custom_gradient
def _attention_recomputed(q, k, v, visible):
    """`attend`'s softmax(...) v, whose backward pass recomputes the probabilities from q and k.

    Automatic differentiation keeps every layer's float32 probabilities `[batch * n_head, seq, seq]`
    from the forward pass to the backward pass: 48 MB a layer for 124M at 1024 positions, 576 MB over
    its 12 layers (XLA's buffer assignment of the training step). Recomputing them costs one q k^T and
    softmax a layer (figures: docs/performance.md).
    """
    out = tf.matmul(tf.cast(_probabilities(q, k, visible), v.dtype), v)

    def grad(d_out):
        q_, k_ = _apart(d_out, q, k)
        p = _probabilities(q_, k_, visible)
        d_v = tf.matmul(tf.cast(p, d_out.dtype), d_out, transpose_a=True)
        d_p = tf.cast(tf.matmul(d_out, v, transpose_b=True), tf.float32)
        d_scores = tf.cast(p * (d_p - tf.reduce_sum(d_p * p, axis=-1, keepdims=True)), q.dtype)
        d_scores *= tf.cast(1.0 / math.sqrt(q.shape[-1]), q.dtype)
        return tf.matmul(d_scores, k_), tf.matmul(d_scores, q_, transpose_a=True), d_v, None

    return out, grad


def write_at(cache, new, start):
    """`cache` `[rows, window, d]` with positions start..start+seq-1 replaced by `new` `[rows, seq, d]`.

    A scatter of whole rows: XLA updates the loop's cache buffer in place. Shared by
    `Attention.__call__` and `columns.step`, the two writers of a fixed-window cache.
    """
    rows, seq = tf.shape(new)[0], tf.shape(new)[1]
    at = tf.stack(tf.meshgrid(tf.range(rows), start + tf.range(seq), indexing="ij"), axis=-1)  # [rows, seq, 2]
    return tf.tensor_scatter_nd_update(cache, at, new)


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_inner(x):
    """The tanh's argument: sqrt(2 / pi) (x + 0.044715 x^3)."""
    return _GELU_C * (x + 0.044715 * tf.pow(x, 3))


@tf.custom_gradient
def gelu(x):
    """OpenAI's tanh approximation of GELU (what the checkpoints were trained with).

    Its backward pass recomputes the tanh from x: automatic differentiation would keep three tensors of
    x's size besides x (the tanh and two products), `[batch, seq, 4 * n_embd]` each, a layer.
    """
    def grad(d_y):
        (x_,) = _apart(d_y, x)
        return d_y * _gelu_derivative(x_, tf.tanh(_gelu_inner(x_)))

    return _gelu_value(x, tf.tanh(_gelu_inner(x))), grad


def _gelu_value(x, t):
    """gelu(x), given `t` = tanh(_gelu_inner(x))."""
    return 0.5 * x * (1.0 + t)


def _gelu_derivative(x, t):
    """gelu'(x), given `t` = tanh(_gelu_inner(x))."""
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - tf.square(t)) * _GELU_C * (1.0 + 3 * 0.044715 * tf.square(x))


@tf.custom_gradient
def gelu_matmul(x, w):
    """`gelu(x) @ w` for `x` `[n, k]`, `w` `[k, m]`: the MLP's second product, keeping only x for the backward pass.

    Automatic differentiation would keep the product's input, gelu(x), besides x (`[batch, seq, 4 * n_embd]`,
    a layer); the backward pass recomputes it with the derivative, from the same tanh.
    """
    def grad(d_y):
        x_, w_ = _apart(d_y, x, w)
        t = tf.tanh(_gelu_inner(x_))
        return (tf.matmul(d_y, w_, transpose_b=True) * _gelu_derivative(x_, t),
                tf.matmul(_gelu_value(x_, t), d_y, transpose_a=True))

    return tf.matmul(gelu(x), w), grad


def layer_norm(x, g, b):
    """LayerNorm over the last axis, in float32 (also for 16-bit `x`), returned in x's dtype."""
    return _scaled(_normalized(x)[0], g, b, x.dtype)


def _scaled(normalized, g, b, dtype):
    """`normalized * g + b` in float32, returned in `dtype`: LayerNorm's last step."""
    return tf.cast(normalized * tf.cast(g, tf.float32) + tf.cast(b, tf.float32), dtype)


def _normalized(x):
    """((x - mean) / std over the last axis, 1 / std), in float32."""
    x32 = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
    inverse = tf.math.rsqrt(variance + LAYER_NORM_EPSILON)
    return (x32 - mean) * inverse, inverse


@tf.custom_gradient
def norm_matmul(x, g, b, w):
    """`layer_norm(x, g, b) @ w` for `x` `[n, k]`, `w` `[k, m]`, keeping only x for the backward pass.

    Automatic differentiation would keep the LayerNorm's output besides x (`[batch, seq, n_embd]`, twice a
    layer); the backward pass recomputes it, and takes LayerNorm's gradient in closed form.
    """
    def grad(d_out):
        x_, g_, w_ = _apart(d_out, x, g, w)
        normalized, inverse = _normalized(x_)
        g32 = tf.cast(g_, tf.float32)
        d_y = tf.cast(tf.matmul(d_out, w_, transpose_b=True), tf.float32)  # [n, k]
        d_n = d_y * g32
        d_x = inverse * (d_n - tf.reduce_mean(d_n, -1, keepdims=True)
                         - normalized * tf.reduce_mean(d_n * normalized, -1, keepdims=True))
        y = _scaled(normalized, g_, b, x.dtype)
        return (tf.cast(d_x, x.dtype), tf.cast(tf.reduce_sum(d_y * normalized, 0), g.dtype),
                tf.cast(tf.reduce_sum(d_y, 0), b.dtype), tf.matmul(y, d_out, transpose_a=True))

    return tf.matmul(layer_norm(x, g, b), w), grad
