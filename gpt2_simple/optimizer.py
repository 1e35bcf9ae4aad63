"""The optimizers `finetune` offers, with state saved by TF1 names so a resume is exact.

This module owns the update rule and the optimizer's state: Adam exactly as TF1's
`AdamOptimizer` (which gpt-2-simple used: beta1 0.9, beta2 0.999, epsilon 1e-8, bias correction
folded into the step size) and plain gradient descent. Slots are named as TF1 named them
(`model/wte/Adam`, `model/wte/Adam_1`, `beta1_power`, `beta2_power`), so a checkpoint of the
state reads like a TF1 one. Gradients and the training loop are `train.py`'s.
"""
import tensorflow as tf

OPTIMIZERS = ("adam", "sgd")


class SGD(tf.Module):
    """Plain gradient descent: `w -= learning_rate * g`."""

    def __init__(self, variables, learning_rate):
        super().__init__(name="sgd")
        self.variables_by_name = dict(variables)
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, name="learning_rate")

    def apply(self, grads):
        """Apply one update; `grads` is a list aligned with `variables_by_name.values()`."""
        for var, grad in zip(self.variables_by_name.values(), grads):
            var.assign_sub(self.learning_rate * grad)

    def state(self):
        """`{name: tensor}` of everything needed to continue exactly."""
        return {}

    def load_state(self, reader_get):
        """Restore from `reader_get(name) -> array` (missing names raise KeyError)."""


class Adam(SGD):
    """TF1's Adam, with its slot names."""

    def __init__(self, variables, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
        super().__init__(variables, learning_rate)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.m = {n: tf.Variable(tf.zeros_like(v), trainable=False, name="Adam") for n, v in self.variables_by_name.items()}
        self.v = {n: tf.Variable(tf.zeros_like(v), trainable=False, name="Adam_1") for n, v in self.variables_by_name.items()}
        self.beta1_power = tf.Variable(beta1, trainable=False, name="beta1_power")
        self.beta2_power = tf.Variable(beta2, trainable=False, name="beta2_power")

    def apply(self, grads):
        # TF1's form: the bias correction goes into the step size, epsilon stays outside it.
        lr = self.learning_rate * tf.sqrt(1.0 - self.beta2_power) / (1.0 - self.beta1_power)
        for (name, var), grad in zip(self.variables_by_name.items(), grads):
            m = self.m[name].assign(self.beta1 * self.m[name] + (1.0 - self.beta1) * grad)
            v = self.v[name].assign(self.beta2 * self.v[name] + (1.0 - self.beta2) * tf.square(grad))
            var.assign_sub(lr * m / (tf.sqrt(v) + self.epsilon))
        self.beta1_power.assign(self.beta1_power * self.beta1)
        self.beta2_power.assign(self.beta2_power * self.beta2)

    def state(self):
        tensors = {"beta1_power": self.beta1_power, "beta2_power": self.beta2_power}
        for name in self.variables_by_name:
            tensors[f"{name}/Adam"] = self.m[name]
            tensors[f"{name}/Adam_1"] = self.v[name]
        return tensors

    def load_state(self, reader_get):
        for name, var in self.state().items():
            var.assign(reader_get(name))


def make_optimizer(name, variables, learning_rate):
    """An optimizer by name ('adam' or 'sgd') over `variables` (`{name: tf.Variable}`)."""
    if name == "adam":
        return Adam(variables, learning_rate)
    if name == "sgd":
        return SGD(variables, learning_rate)
    raise ValueError(f"optimizer={name!r} is not supported; use one of {OPTIMIZERS}")
