"""The learning-rate schedule: the rate each optimizer step uses, as a function of the step counter.

This module owns `learning_rate_schedule`: 'constant' (gpt-2-simple's), or a linear warmup over
`warmup_steps` followed by a 'linear' or 'cosine' decay to `min_learning_rate` at the last step
of the call. The rate depends only on the run's step counter, so a resumed run continues on the
same curve. The optimizer holds the rate in a variable that `train.py` sets before each step.

For step `t` (the counter, 1 for the first step), warmup `w`, last step `T`, rates `lr` and
`lr_min`:

    t <= w:      lr * t / w
    linear:      lr_min + (lr - lr_min) * (T - t) / (T - w)
    cosine:      lr_min + (lr - lr_min) * (1 + cos(pi * (t - w) / (T - w))) / 2
"""
import dataclasses
import math

SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning rate at every step of a run whose last step is `last_step`."""

    learning_rate: float
    kind: str = "constant"
    warmup_steps: int = 0
    min_learning_rate: float = 0.0
    last_step: int = 0  # T; the decay reaches min_learning_rate here

    def __call__(self, step):
        """The rate of optimizer step `step` (1-based, the run's counter)."""
        lr, w, t = self.learning_rate, self.warmup_steps, step
        if w and t <= w:
            return lr * t / w
        if self.kind == "constant":
            return lr
        span = max(self.last_step - w, 1)
        progress = min(max((t - w) / span, 0.0), 1.0)
        if self.kind == "linear":
            share = 1.0 - progress
        else:
            share = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_learning_rate + (lr - self.min_learning_rate) * share

    @classmethod
    def of_run(cls, opts, last_step):
        """The schedule of `finetune`'s options, for a call whose last step is `last_step`."""
        return cls(opts.learning_rate, opts.learning_rate_schedule, opts.warmup_steps, opts.min_learning_rate,
                   last_step)

    @property
    def varies(self):
        return self.kind != "constant" or self.warmup_steps > 0
