"""The next-token cross-entropy computed a slice of the vocabulary at a time, in bounded memory.

The plain loss forms every position's logits over all 50257 tokens in float32, then their
softmax and their gradient, each `[positions, n_vocab]` (206 MB for 1024 positions), and for
a 16-bit base also a float32 copy of the whole output matrix (the tied `wte`: 257 MB at 774M).
Here the output layer and the loss are one function with its own gradient: the forward pass
walks the vocabulary in chunks of `CHUNK` columns, keeping a running maximum and sum of
exponentials (a log-sum-exp that never holds more than one chunk's logits), and the backward
pass walks it again, recomputing each chunk's logits to form its part of the gradient. What
stays alive between the passes is one float per position. The cost is the output layer's
matmul once more (about 1/6 of a LoRA step's arithmetic at 124M, less for the larger sizes).

This module owns that function only; `step.py` decides when to use it (with recomputation,
which already trades compute for memory).
"""
import tensorflow as tf

CHUNK = 8192  # vocabulary columns per chunk: 7 chunks for GPT-2, 32 MB of float32 logits each at 1024 positions


def chunked_lm_loss(features, wte, tokens, *, chunk=None, wte_trainable=True, weights=None):
    """Mean next-token cross-entropy of `tokens` under logits `features @ wte^T`, chunk by chunk.

    Args:
        features: `[batch, seq, n_embd]`, the final LayerNorm's output in the compute dtype.
        wte: the output matrix `[n_vocab, n_embd]` (a variable or tensor, in its storage dtype).
        tokens: int32 `[batch, seq]`; position i predicts token i + 1.
        chunk: vocabulary columns per chunk (None: `CHUNK`).
        wte_trainable: whether to compute `wte`'s gradient (a frozen base needs none).
        weights: None (every target counts alike), or float32 `[batch, seq - 1]`: the loss is the
            weighted mean (the trained tokens of structured examples: weights 0 and 1).

    Returns:
        The float32 scalar loss, equal to `lm_loss`'s up to rounding.
    """
    n_embd = features.shape[-1]
    h = tf.reshape(features[:, :-1], [-1, n_embd])  # [rows, n_embd]: every position but the last
    labels = tf.reshape(tokens[:, 1:], [-1])  # [rows]
    if weights is None:
        share = tf.fill(tf.shape(labels), 1.0 / tf.cast(tf.shape(labels)[0], tf.float32))
    else:
        weights = tf.reshape(weights, [-1])
        share = weights / tf.maximum(tf.reduce_sum(weights), 1.0)  # [rows]: each target's part of the mean
    return _loss(h, tf.convert_to_tensor(wte), labels, share, chunk or CHUNK, wte_trainable)


def _columns(w, j, chunk, dtype):
    """Chunk j of the vocabulary: (its rows of `w` in `dtype`, their token ids, which of them are new).

    Every chunk has the same size (a fixed shape, for XLA too); the last one ends at n_vocab and
    so may overlap the one before, whose columns it marks as not new.
    """
    size = min(chunk, w.shape[0])
    start = tf.minimum(j * chunk, w.shape[0] - size)
    ids = start + tf.range(size)
    return tf.cast(tf.slice(w, [start, 0], [size, -1]), dtype), ids, ids >= j * chunk


def _logits(h, w_j):
    """One chunk's float32 logits `[rows, size]`, computed in `h`'s dtype as the plain output layer does."""
    return tf.cast(tf.matmul(h, w_j, transpose_b=True), tf.float32)


def _loss(h, w, labels, share, chunk, wte_trainable):
    n_chunks = -(-w.shape[0] // chunk)
    rows = tf.shape(h)[0]
    loop = dict(parallel_iterations=1)  # one chunk at a time: that is the point

    @tf.custom_gradient
    def loss(h, w):
        def forward(j, top, total, picked):
            w_j, ids, new = _columns(w, j, chunk, h.dtype)
            logits = tf.where(new[None, :], _logits(h, w_j), float("-inf"))
            top_j = tf.maximum(top, tf.reduce_max(logits, axis=1))
            total = total * tf.exp(top - top_j) + tf.reduce_sum(tf.exp(logits - top_j[:, None]), axis=1)
            hit = tf.equal(labels[:, None], ids[None, :]) & new[None, :]
            return j + 1, top_j, total, picked + tf.reduce_sum(tf.where(hit, logits, 0.0), axis=1)

        start = (0, tf.fill([rows], float("-inf")), tf.zeros([rows]), tf.zeros([rows]))
        _, top, total, picked = tf.while_loop(lambda j, *_: j < n_chunks, forward, start, **loop)
        lse = top + tf.math.log(total)  # [rows]: log of the softmax's denominator

        def grad(dy):
            scale = dy * share[:, None]

            def backward(j, dh, dw):
                w_j, ids, new = _columns(w, j, chunk, h.dtype)
                hit = tf.cast(tf.equal(labels[:, None], ids[None, :]), tf.float32)
                d_logits = tf.where(new[None, :], (tf.exp(_logits(h, w_j) - lse[:, None]) - hit) * scale, 0.0)
                d_logits = tf.cast(d_logits, h.dtype)  # [rows, size]
                dh = dh + tf.cast(tf.matmul(d_logits, w_j), tf.float32)
                if wte_trainable:
                    dw = tf.tensor_scatter_nd_add(dw, ids[:, None], tf.cast(
                        tf.matmul(d_logits, h, transpose_a=True), tf.float32))
                return j + 1, dh, dw

            dw = tf.zeros(w.shape, tf.float32) if wte_trainable else tf.zeros([])
            _, dh, dw = tf.while_loop(lambda j, *_: j < n_chunks, backward, (0, tf.zeros(tf.shape(h)), dw), **loop)
            return tf.cast(dh, h.dtype), (tf.cast(dw, w.dtype) if wte_trainable else None)

        return tf.reduce_sum(share * (lse - picked)), grad

    return loss(h, w)
