"""The compiled training step: loss, gradients, accumulation, devices and precision.

This module owns what runs inside `tf.function` while fine-tuning: the language-model loss,
gradient accumulation over minibatches, the split of each batch across the replicas of a
`tf.distribute` strategy and the all-reduce of their gradients, dynamic loss scaling for
float16, and the call into the optimizer. The Python loop around it (data, printing, saving) is
`train.py`'s; the update rules are `optimizer.py`'s.
"""
import tensorflow as tf

from .. import xla_choice
from .vocab_chunks import chunked_lm_loss

# precision= name -> compute dtype. Weights (and checkpoints) stay float32 in every case.
PRECISIONS = {"float32": tf.float32, "mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}


def token_losses(model, tokens, *, dtype=tf.float32, recompute=False, segments=None, positions=None):
    """Next-token cross-entropy in nats, `[batch, seq - 1]`: position i scores `tokens[:, i + 1]`.

    The last position predicts nothing, so it is dropped before the output projection: the logits
    then have the shape of their gradient, and XLA writes that gradient over them (one `[seq, n_vocab]`
    buffer fewer at the step's peak).
    """
    features = model.train_logits(tokens, dtype=dtype, recompute=recompute, features=True, segments=segments,
                                  positions=positions)  # [batch, seq, n_embd]
    logits = model.project(features[:, :-1])  # [batch, seq - 1, n_vocab] float32
    return cross_entropy(logits, tokens[:, 1:])


@tf.custom_gradient
def cross_entropy(logits, labels):
    """`-log softmax(logits)[label]` over the last axis, keeping one tensor the size of the logits.

    TensorFlow's `sparse_softmax_cross_entropy_with_logits` makes its gradient in the forward pass and
    keeps it beside the logits. Here only `exp(logits - max)` is kept, and the gradient
    `softmax - one_hot` is made from it in the backward pass, where it can take the logits' place. The
    picked logits are read before the exponential (their 0 times in `top` orders it): otherwise XLA
    fused that read into the loss after it and kept the logits alive beside the exponential. Under
    XLA at 124M, context 1024: the plan's peak 1,718 -> 1,358 MB, the step 5.48 -> 5.35 s.
    """
    picked = tf.gather(logits, labels, batch_dims=labels.shape.rank)
    top = tf.reduce_max(logits, axis=-1, keepdims=True) + 0 * picked[..., None]  # after `picked`: see above
    scaled = tf.exp(logits - top)
    total = tf.reduce_sum(scaled, axis=-1, keepdims=True)
    losses = tf.math.log(total[..., 0]) + top[..., 0] - picked

    def grad(d_losses):
        chosen = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
        return (scaled / total - chosen) * d_losses[..., None], None

    return losses, grad


def lm_loss(model, batch, *, dtype=tf.float32, recompute=False, chunked=None):
    """Mean next-token cross-entropy of a batch: every position predicts the next, or the trained ones.

    Args:
        batch: int32 `[batch, seq]` tokens (every target counts), or `[batch, 4, seq]` packed
            examples (`packing.CHANNELS`: tokens, trained, segments, positions): the mean over
            the trained targets, each example attending only to itself.
        chunked: (default: `recompute`) compute it a slice of the vocabulary at a time, so the
            float32 logits and their gradient are never whole (`vocab_chunks.py`); the loss is the same.
    """
    batch, weights, where = tf.convert_to_tensor(batch), None, {}
    if batch.shape.rank == 3:
        batch, trained, segments, positions = tf.unstack(batch, axis=1)
        weights, where = tf.cast(trained[:, 1:], tf.float32), dict(segments=segments, positions=positions)
    if recompute if chunked is None else chunked:
        features = model.train_logits(batch, dtype=dtype, recompute=recompute, features=True, **where)
        return chunked_lm_loss(features, model.wte, batch, wte_trainable=model.wte.trainable, weights=weights)
    losses = token_losses(model, batch, dtype=dtype, recompute=recompute, **where)  # [batch, seq - 1]
    if weights is None:
        return tf.reduce_mean(losses)
    return tf.reduce_sum(losses * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


class LossScale(tf.Module):
    """Dynamic loss scaling for float16 gradients.

    The loss is multiplied by `scale` before the backward pass so small gradients do not
    underflow float16, and the gradients are divided by it again. A step whose gradients are
    not all finite is skipped and halves the scale; `period` finite steps in a row double it.
    """

    def __init__(self, initial=2.0**15, period=2000):
        super().__init__(name="loss_scale")
        self.scale = tf.Variable(float(initial), trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
        self.period = period

    def update(self, finite):
        """Adjust the scale after a step whose gradients were (`finite`) or were not all finite."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.period)
        self.scale.assign(tf.where(grow, self.scale * 2.0, tf.where(finite, self.scale, self.scale * 0.5)))
        self.good_steps.assign(tf.where(finite & ~grow, self.good_steps + 1, tf.zeros_like(self.good_steps)))

    def get_state(self):
        return [float(self.scale.numpy()), int(self.good_steps.numpy())]

    def set_state(self, state):
        self.scale.assign(state[0])
        self.good_steps.assign(state[1])


XLA_MIN_PARAMS = 10_000_000  # below this a step takes milliseconds and compiling it costs seconds


def use_xla(hparams, recompute):
    """Whether the training step compiles its minibatches with XLA by default.

    On a CPU, no: TensorFlow's graph trains faster, in less memory and with a quicker first step
    (124M: 199 against 192 tokens/s, peak 3.77 against 3.94 GB, first step 10.1 against 12.5 s;
    355M and LoRA alike; docs/performance.md). On a GPU, yes for models of `XLA_MIN_PARAMS` weights
    or more, unless `recompute` (XLA's common-subexpression pass would merge the recomputed blocks
    back into the forward pass): there XLA fuses the elementwise work the graph launches an op at a
    time (not measured here: this machine has no GPU).
    """
    return _on_gpu() and not recompute and hparams.n_params >= XLA_MIN_PARAMS


def _on_gpu():
    return bool(tf.config.list_logical_devices("GPU"))


def compile_train_step(model, opt, names, *, strategy, precision="float32", recompute=False, loss_scale=None,
                       xla=None, examples=False):
    """Build the step: `train_step(batches)` -> mean loss, one optimizer update.

    Args:
        model: the `GPT2`, created under `strategy.scope()`.
        opt: an optimizer from `optimizer.make_optimizer` over `model.weights[n] for n in names`.
        names: the names of the weights to train (OpenAI's, or LoRA adapters'), as in `opt`.
        strategy: a `tf.distribute.Strategy` (the default strategy for one device).
        precision: a key of `PRECISIONS`.
        recompute: recompute each block in the backward pass (less memory, more compute).
        loss_scale: a `LossScale` (float16), or None.
        xla: compile each minibatch's forward and backward pass with XLA (`jit_compile`); the
            default, None, is `use_xla(model.hparams, recompute)` unless `GPT2_SIMPLE_XLA` says
            otherwise, and in every case only where the device can compile (`xla_choice.decide`).
        examples: the batches are packed examples, `[accumulate, global_batch, 4, seq]` (`lm_loss`).

    Returns:
        A `tf.function` taking int32 `[accumulate, global_batch, seq]` (or the examples' shape).
        Every replica takes its `global_batch / replicas` rows of each minibatch, so the result
        equals one device's.
    """
    variables = [opt.variables_by_name[n] for n in names]  # the weights, or LoRA's adapters
    dtype = PRECISIONS[precision]
    xla = xla_choice.decide(xla, default=use_xla(model.hparams, recompute))

    def replica_step(batches):
        ctx = tf.distribute.get_replica_context()
        rows = tf.shape(batches)[1] // ctx.num_replicas_in_sync
        first = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * rows
        batches = batches[:, first:first + rows]  # [accumulate, rows, seq]: this replica's share
        scale = tf.convert_to_tensor(loss_scale.scale) if loss_scale is not None else tf.constant(1.0)

        def minibatch(tokens, scale):
            # Packed examples count by their trained tokens: the minibatch's mean times that count is
            # its sum, so the step divides the sums of all minibatches and replicas by their total.
            weight = tf.reduce_sum(tf.cast(tokens[:, 1, 1:], tf.float32)) if examples else tf.constant(1.0)
            with tf.GradientTape() as tape:
                loss = lm_loss(model, tokens, dtype=dtype, recompute=recompute) * weight
                scaled = loss * scale
            return [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)], loss, weight

        if xla:
            minibatch = tf.function(minibatch, jit_compile=True, autograph=False)

        # One loop over all the minibatches, so the forward and backward passes are traced once
        # (tracing is most of a first step's wait). The sums start as scalar zeros, broadcast by
        # the first addition: no zero-filled buffers, so with accumulate_gradients=1 the step
        # holds one set of gradients, not two.
        def body(i, grads, total, count):
            more, loss, weight = minibatch(batches[i], scale)
            return i + 1, [g + m for g, m in zip(grads, more)], total + loss, count + weight

        start = (tf.constant(0), [tf.constant(0.0)] * len(variables), tf.constant(0.0), tf.constant(0.0))
        _, grads, total, count = tf.while_loop(
            lambda i, *_: i < tf.shape(batches)[0], body, start,
            shape_invariants=(tf.TensorShape([]), [tf.TensorShape(None)] * len(variables), tf.TensorShape([]),
                              tf.TensorShape([])))
        grads = [tf.ensure_shape(g, v.shape) for g, v in zip(grads, variables)]
        count = tf.maximum(count, 1.0)  # minibatches, or trained tokens (a step of none trains nothing)
        return [g / (count * scale) for g in grads], total / count, count

    @tf.function(input_signature=[batch_spec(3, examples)], autograph=False)
    def train_step(batches):
        grads, loss, count = strategy.run(replica_step, args=(batches,))
        if examples:  # each replica's mean, weighted by its trained tokens: the mean over all of them
            add = tf.distribute.ReduceOp.SUM
            total = strategy.reduce(add, count, axis=None)
            share = strategy.run(lambda c: c / total, args=(count,))
            grads = strategy.run(lambda gs, s: [g * s for g in gs], args=(grads, share))
            grads = strategy.extended.batch_reduce_to(add, list(zip(grads, variables)))
            loss = strategy.reduce(add, strategy.run(lambda v, s: v * s, args=(loss, share)), axis=None)
        else:
            mean = tf.distribute.ReduceOp.MEAN
            grads = strategy.extended.batch_reduce_to(mean, list(zip(grads, variables)))
            loss = strategy.reduce(mean, loss, axis=None)
        if loss_scale is None:
            opt.apply(grads)
            return loss
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        tf.cond(finite, lambda: _apply(opt, grads), lambda: tf.constant(False))
        loss_scale.update(finite)
        return loss

    return train_step


def _apply(opt, grads):
    opt.apply(grads)
    return tf.constant(True)


def batch_spec(rank, examples):
    """The int32 input of a compiled step: `rank` dimensions of tokens, one more for packed examples."""
    return tf.TensorSpec([None] * (rank - 1) + ([4] if examples else []) + [None], tf.int32)


def compile_eval_step(model, *, precision="float32", examples=False):
    """`eval_step(tokens [batch, seq])` (or packed examples `[batch, 4, seq]`) -> mean loss, compiled once (validation)."""
    dtype = PRECISIONS[precision]

    @tf.function(input_signature=[batch_spec(2, examples)])
    def eval_step(tokens):
        return lm_loss(model, tokens, dtype=dtype)

    return eval_step
