"""The optimizers `finetune` offers, with state saved by TF1 names so a resume is exact.

This module owns the update rules and the optimizer state:
- `adam`: TF1's `AdamOptimizer` exactly (which gpt-2-simple used: beta1 0.9, beta2 0.999,
  epsilon 1e-8, bias correction folded into the step size); slots named as TF1 named them
  (`model/wte/Adam`, `model/wte/Adam_1`, `beta1_power`, `beta2_power`). State: 2 x the weights.
- `adafactor`: Adafactor (Shazeer & Stern, 2018) without momentum, with factored second moments:
  a `[n, m]` weight keeps a row vector and a column vector instead of an `[n, m]` slot, so the
  state of 124M is 0.3% of Adam's. Updates are clipped to RMS 1, so `learning_rate` keeps its
  Adam-like meaning (the largest typical step per weight).
- `sgd`: plain gradient descent, no state.

Every rule takes `weight_decay` (decoupled, as AdamW: `w -= learning_rate * weight_decay * w`,
on weight matrices only) and `max_grad_norm` (the global norm of the gradients they are given is
clipped first and kept in `grad_norm`), so both work on whatever variables are trained.

Updates go through `strategy.extended.update`, so under `tf.distribute` each device updates its
own copy of a mirrored weight with the all-reduced gradient. Gradients and the loop are
`step.py`'s and `train.py`'s.
"""
import tensorflow as tf

OPTIMIZERS = ("adam", "adafactor", "sgd")


class SGD(tf.Module):
    """Plain gradient descent: `w -= learning_rate * g`.

    Args:
        variables: `{name: tf.Variable}`, the weights to train.
        learning_rate: the step size.
        strategy: the `tf.distribute.Strategy` the weights were created under (default: none).
    """

    def __init__(self, variables, learning_rate, strategy=None, *, weight_decay=0.0, max_grad_norm=None):
        super().__init__(name=type(self).__name__.lower())
        self.variables_by_name = dict(variables)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, name="learning_rate")
        self.weight_decay = float(weight_decay)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.grad_norm = tf.Variable(0.0, trainable=False, name="grad_norm")  # of the last step, before clipping

    def apply(self, grads):
        """Apply one update; `grads` is a list aligned with `variables_by_name.values()`.

        With `max_grad_norm`, the gradients are first scaled so their global norm (over these
        variables: every trained weight, or only adapters) is at most `max_grad_norm`. With
        `weight_decay`, every decayed weight also shrinks by `learning_rate * weight_decay * w`,
        apart from the gradient step (AdamW's decoupled decay).
        """
        if self.max_grad_norm is not None:
            norm = tf.linalg.global_norm(grads)
            self.grad_norm.assign(norm)
            clip = tf.minimum(1.0, self.max_grad_norm / tf.maximum(norm, 1e-12))
            grads = [g * clip for g in grads]
        lr = self._step_size()
        decay = self.learning_rate * self.weight_decay
        update = self.strategy.extended.update
        for (name, var), grad in zip(self.variables_by_name.items(), grads):
            if self.weight_decay and decays(name, var):
                update(var, self._decayed_update, args=(grad, decay, lr, *self._slots(name)), group=False)
            else:
                update(var, self._update, args=(grad, lr, *self._slots(name)), group=False)
        self._advance()

    def _decayed_update(self, var, grad, decay, lr, *slots):
        var.assign_sub(decay * var)
        self._update(var, grad, lr, *slots)

    def _step_size(self):
        return tf.convert_to_tensor(self.learning_rate)

    def _slots(self, name):
        return ()

    def _update(self, var, grad, lr):
        var.assign_sub(lr * grad)

    def _advance(self):
        """Per-step scalars (bias corrections, the step count), after every weight is updated."""

    def state(self):
        """`{name: variable}` of everything needed to continue exactly."""
        return {}

    def load_state(self, reader_get):
        """Restore from `reader_get(name) -> array` (missing names raise KeyError)."""
        for name, var in self.state().items():
            var.assign(tf.cast(reader_get(name), var.dtype))  # moments may be saved in bfloat16


def decays(name, var):
    """Whether weight decay applies: weight matrices yes; biases, LayerNorm gains and the embeddings no."""
    return var.shape.rank >= 2 and name not in ("model/wte", "model/wpe")


def _slot(like, name, shape=None):
    """A zero slot variable, placed (and mirrored) like the weight it belongs to."""
    shape = like.shape if shape is None else shape
    return tf.Variable(tf.zeros(shape, like.dtype), trainable=False, name=name)


class Adam(SGD):
    """TF1's Adam, with its slot names."""

    def __init__(self, variables, learning_rate, strategy=None, beta1=0.9, beta2=0.999, epsilon=1e-8, **controls):
        super().__init__(variables, learning_rate, strategy, **controls)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.m = {n: _slot(v, "Adam") for n, v in self.variables_by_name.items()}
        self.v = {n: _slot(v, "Adam_1") for n, v in self.variables_by_name.items()}
        self.beta1_power = tf.Variable(beta1, trainable=False, name="beta1_power")
        self.beta2_power = tf.Variable(beta2, trainable=False, name="beta2_power")

    def _step_size(self):
        # TF1's form, which its kernel computes: the bias correction goes into the step size,
        # lr * sqrt(1 - beta2_power) / (1 - beta1_power), and epsilon stays outside it.
        return tf.convert_to_tensor(self.learning_rate)

    def _slots(self, name):
        return self.m[name], self.v[name]

    def _update(self, var, grad, lr, m, v):
        # TF1's own Adam kernel (what AdamOptimizer ran): the weight and both moments updated in place, with
        # no temporaries the size of the weight (an update written as tensor ops makes several for every weight).
        tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=self.beta1_power,
                                     beta2_power=self.beta2_power, lr=lr, beta1=self.beta1,
                                     beta2=self.beta2, epsilon=self.epsilon, grad=grad)

    def _advance(self):
        self.beta1_power.assign(self.beta1_power * self.beta1)
        self.beta2_power.assign(self.beta2_power * self.beta2)

    def state(self):
        tensors = {"beta1_power": self.beta1_power, "beta2_power": self.beta2_power}
        for name in self.variables_by_name:
            tensors[f"{name}/Adam"] = self.m[name]
            tensors[f"{name}/Adam_1"] = self.v[name]
        return tensors


class Adafactor(SGD):
    """Adafactor without momentum: factored second moments, update clipping, decay 1 - t^-0.8.

    A weight of rank >= 2 keeps `vr` (mean of g^2 over its last axis) and `vc` (over the axis
    before it); the second moment of weight [i, j] is estimated as vr[i] * vc[j] / mean(vr).
    Vectors (biases, LayerNorm) keep a full `v`.
    """

    def __init__(self, variables, learning_rate, strategy=None, decay=0.8, epsilon=1e-30, clip=1.0, **controls):
        super().__init__(variables, learning_rate, strategy, **controls)
        self.decay, self.epsilon, self.clip = decay, epsilon, clip
        self.slots = {}
        for name, var in self.variables_by_name.items():
            shape = var.shape
            if shape.rank >= 2:
                self.slots[name] = {"Adafactor_vr": _slot(var, "Adafactor_vr", shape[:-1]),
                                    "Adafactor_vc": _slot(var, "Adafactor_vc", shape[:-2] + shape[-1:])}
            else:
                self.slots[name] = {"Adafactor_v": _slot(var, "Adafactor_v")}
        self.step = tf.Variable(0.0, trainable=False, name="adafactor_step")

    def _step_size(self):
        t = self.step + 1.0
        return tf.stack([self.learning_rate, 1.0 - tf.pow(t, -self.decay)])  # [lr, beta2 of this step]

    def _slots(self, name):
        return tuple(self.slots[name].values())

    def _update(self, var, grad, lr_and_beta2, *slots):
        lr, beta2 = lr_and_beta2[0], lr_and_beta2[1]
        g2 = tf.square(grad) + self.epsilon
        if len(slots) == 2:
            vr = slots[0].assign(beta2 * slots[0] + (1.0 - beta2) * tf.reduce_mean(g2, axis=-1))
            vc = slots[1].assign(beta2 * slots[1] + (1.0 - beta2) * tf.reduce_mean(g2, axis=-2))
            row_share = vr / tf.reduce_mean(vr, axis=-1, keepdims=True)
            u = grad * tf.math.rsqrt(row_share[..., :, None] * vc[..., None, :])
        else:
            v = slots[0].assign(beta2 * slots[0] + (1.0 - beta2) * g2)
            u = grad * tf.math.rsqrt(v)
        rms = tf.sqrt(tf.reduce_mean(tf.square(u)))
        var.assign_sub(lr * u / tf.maximum(1.0, rms / self.clip))

    def _advance(self):
        self.step.assign_add(1.0)

    def state(self):
        tensors = {"adafactor_step": self.step}
        for name, slots in self.slots.items():
            tensors.update({f"{name}/{suffix}": slot for suffix, slot in slots.items()})
        return tensors


def make_optimizer(name, variables, learning_rate, strategy=None, *, weight_decay=0.0, max_grad_norm=None):
    """An optimizer by name ('adam', 'adafactor' or 'sgd') over `variables` (`{name: tf.Variable}`).

    `weight_decay` (decoupled, see `decays`) and `max_grad_norm` (global-norm clipping) apply to
    these variables, whichever they are. Create it inside `strategy.scope()` when training under
    a distribution strategy.
    """
    classes = {"adam": Adam, "adafactor": Adafactor, "sgd": SGD}
    if name not in classes:
        raise ValueError(f"optimizer={name!r} is not supported; use one of {OPTIMIZERS}")
    return classes[name](variables, learning_rate, strategy, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
