"""How far apart two Adam runs can end when their gradients differ only in float rounding.

Two paths that compute the same gradients in a different summation order (XLA against
TensorFlow's graph, two replicas against one device) agree on a gradient to its last bits.
Adam divides by the root of its second moment, so where a true gradient is zero (or near it) the
update is noise over noise: any value up to Adam's largest step, with either sign. No float
tolerance can hold there, so weights after Adam are compared against that largest step instead.

The bound (TF1's Adam, as `optimizer.Adam`): step t moves a weight by
`lr_t * m_t / (sqrt(v_t) + eps)` with `lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)`,
`m_t = (1 - b1) * sum_i b1^(t-i) g_i` and `v_t = (1 - b2) * sum_i b2^(t-i) g_i^2`. By
Cauchy-Schwarz, `|sum_i b1^(t-i) g_i| <= sqrt(sum_k (b1^2 / b2)^k) * sqrt(sum_i b2^(t-i) g_i^2)`,
so whatever the gradients, one step moves a weight by at most
`U_t = lr_t * (1 - b1) / sqrt(1 - b2) * sqrt(sum_{k<t} (b1^2 / b2)^k)` (exactly `lr` at t = 1).
Two runs' steps differ by at most `2 * U_t`; decoupled weight decay shrinks a difference and
clipping only rescales the gradients Adam normalizes, so after T steps two runs differ by at
most `sum_{t<=T} 2 * U_t`.
"""
import math


def adam_divergence_bound(learning_rate, steps, beta1=0.9, beta2=0.999):
    """The largest difference one weight can have between two Adam runs after `steps` updates."""
    total = 0.0
    for t in range(1, steps + 1):
        step_size = learning_rate * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        ratio = sum((beta1**2 / beta2) ** k for k in range(t))
        total += 2 * step_size * (1 - beta1) / math.sqrt(1 - beta2) * math.sqrt(ratio)
    return total
