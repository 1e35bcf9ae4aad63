"""One decoding step with the activations as columns, `[features, batch]`: XLA's fast orientation.

This module owns the XLA decoding loop's forward pass of one token; `GPT2.forward` (model.py)
stays the one definition of the model, and this step computes the same logits in another
orientation. XLA's CPU backend multiplies `[batch, nx] @ [nx, nf]` (the stored layout) on one
core, slower than it multiplies `[nf, nx] @ [nx, batch]` (`bench/benchmark.py --only profile`).
So each `Sampler.chunks` call transposes the block matrices once (`loop_matrices`), and passes
them to every compiled call of the loop, whose steps keep their activations as columns. The output
projection needs no copy: `wte` `[n_vocab, n_embd]` is already `[nf, nx]`.

The copies cost the block weights' size while the call runs (340 MB at 124M), and nothing after it.
Made inside each compiled call instead, they would cost a stream or a server request, which
draws 4 tokens a call, more than the whole generation takes. The measured figures, and the
tokens/s this step gains over `GPT2.forward`: docs/performance.md, "Figures behind the code's
choices".
"""
import tensorflow as tf

from .ops import LAYER_NORM_EPSILON, attend, gelu, write_at

# The most the transposed copies may take: 774M's are 2.7 GB; 1558M's 5.8 GB would not fit beside its
# 6.2 GB of weights in a free Colab's 12.7 GB, so 1558M decodes by `GPT2.forward`.
MAX_COPY_BYTES = 3 * 2**30


def usable(model):
    """Whether `step` runs `model`: float32 weights, no adapters, copies under MAX_COPY_BYTES.

    Other models decode by `GPT2.forward`, which computes the same logits.
    """
    copy_bytes = 4 * sum(layer.w.shape.num_elements() for b in model.h for layer in _matrix_layers(b))
    return (model.lora is None and all(w.dtype == tf.float32 for w in model.weights.values())
            and copy_bytes <= MAX_COPY_BYTES)


def decoder(model, matrices, adapters=None):
    """`forward(token, keys, values, start, pads)`: a decoding loop's forward pass of the last position,
    `step` over `matrices` (`loop_matrices`), or `GPT2.forward` (`last_only`) when there are none; `adapters`:
    None, or each row's LoRA adapter (`adapter_rows.AdapterTable.rows`)."""
    if not matrices:
        return lambda *args: model.forward(*args, last_only=True, adapters=adapters)
    return lambda token, keys, values, start, pads: step(model, matrices, token, keys, values, start, pads, adapters)


def loop_matrices(model):
    """The XLA loop's `matrices` input: `block_matrices` where `usable`, else none (`GPT2.forward` decodes)."""
    return block_matrices(model) if usable(model) else []


def matrix_specs(model):
    """The `tf.TensorSpec`s of `loop_matrices(model)`, for the compiled loop's signature."""
    if not usable(model):
        return []
    return [tuple(tf.TensorSpec(layer.w.shape[::-1], tf.float32) for layer in _matrix_layers(b)) for b in model.h]


def block_matrices(model):
    """Each block's (c_attn, attn c_proj, c_fc, mlp c_proj) weights transposed to `[nf, nx]`."""
    return [tuple(tf.transpose(layer.w) for layer in _matrix_layers(b)) for b in model.h]


def _matrix_layers(block):
    """A block's four `Conv1D`s whose matrices `step` takes transposed: c_attn, attn c_proj, c_fc, mlp c_proj."""
    return block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj


def step(model, matrices, token, keys, values, start, pads, adapters=None):
    """`model.forward(token, keys, values, start, pads, last_only=True, adapters=adapters)` for one token a row.

    Args:
        matrices: `block_matrices(model)`.
        token: int32 `[batch, 1]`; keys, values, start, pads, adapters: as `GPT2.forward`'s (fixed window).

    Returns:
        (logits float32 `[batch, 1, n_vocab]`, keys, values).
    """
    hp = model.hparams
    position = start if pads is None else tf.maximum(start - pads, 0)  # [] or [batch]
    x = _transposed(model.embed(token[:, 0], position))  # [n_embd, batch]
    new_keys, new_values = [], []
    for block, (w_attn, w_proj, w_fc, w_out), k, v, rows in zip(model.h, matrices, keys, values,
                                                               adapters or [(None,) * 4] * len(model.h)):
        attn = block.attn
        qkv = _transposed(_dense(w_attn, attn.c_attn.b, _norm(block.ln_1, x), rows[0]))  # [batch, 3 * n_embd]
        q, kk, vv = (tf.reshape(t, [-1, 1, hp.head_dim]) for t in tf.split(qkv, 3, axis=1))  # [batch * n_head, 1, head_dim]
        k, v = write_at(k, kk, start), write_at(v, vv, start)
        a = attend(q, k, v, start, pads, hp.n_head)  # [batch * n_head, 1, head_dim]
        x = x + _dense(w_proj, attn.c_proj.b, _transposed(tf.reshape(a, [-1, hp.n_embd])), rows[1])
        x = x + _dense(w_out, block.mlp.c_proj.b, gelu(_dense(w_fc, block.mlp.c_fc.b, _norm(block.ln_2, x), rows[2])),
                       rows[3])
        new_keys.append(k)
        new_values.append(v)
    return model.output_logits(_transposed(x)[:, None, :]), new_keys, new_values


def _norm(layer, x):
    """`layer` (a LayerNorm) over the features of columns `x` `[n_embd, batch]`."""
    mean, variance = tf.nn.moments(x, axes=[0], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) * layer.g[:, None] + layer.b[:, None]


def _dense(w, b, x, rows=None):
    """`w @ x + b` for columns: `[nf, nx] @ [nx, batch]`. `- (-b)`: see `Conv1D.__call__`. `rows`: None, or each
    column's adapter (`lora.row_update`'s), whose update is added."""
    y = tf.matmul(w, x) - tf.negative(b)[:, None]
    if rows is None:
        return y
    a, b_all, mask = rows  # `lora.row_update` for columns: A^T x, masked, then B^T of that: [nf, batch]
    return y + tf.matmul(b_all, tf.matmul(a, x, transpose_a=True) * _transposed(mask), transpose_a=True)


def _transposed(x):
    """The transpose of a matrix, by a gather: XLA folds a `tf.transpose` into the product that
    makes or takes it, and that product then runs in the slow orientation (see the module
    docstring); a gather it leaves alone."""
    rows, cols = tf.shape(x)[0], tf.shape(x)[1]
    return tf.gather(tf.reshape(x, [-1]), tf.range(rows)[None, :] * cols + tf.range(cols)[:, None])
