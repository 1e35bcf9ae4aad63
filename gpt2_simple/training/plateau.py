"""The loss plateau note: one line when the average training loss has stopped falling.

gpt-2-simple's advice is to watch the loss until it stabilises. This module owns noticing that for
the user: at each save it records the running average loss (`avg=` of the progress line), and once
the average has fallen by less than `PLATEAU_FRACTION` over the last `PLATEAU_SAVES` saves it prints
one line, once per `finetune` call. It stops nothing (early stopping on held-out text is
`early_stopping.py`'s) and changes no weights.
"""
PLATEAU_FRACTION = 0.02  # an average that fell by less than 2% ...
PLATEAU_SAVES = 3  # ... over the last 3 saves has levelled off


class Plateau:
    """The average loss at each save, and whether the note was printed."""

    def __init__(self, fraction=PLATEAU_FRACTION, saves=PLATEAU_SAVES):
        self.fraction, self.saves = fraction, saves
        self.averages = []  # (step, average loss) at each save of this call
        self.noted = False

    def record(self, step, avg):
        """Record the running average `avg` = (decayed sum, decayed count) at a save of `step`."""
        if not avg[1]:
            return
        self.averages.append((step, avg[0] / avg[1]))
        if self.noted or len(self.averages) <= self.saves:
            return
        (before_step, before), (_, now) = self.averages[-1 - self.saves], self.averages[-1]
        if now > before * (1 - self.fraction):
            self.noted = True
            print(f"The average loss has levelled off: {now:.2f} at step {step}, {before:.2f} at step {before_step} "
                  f"({self.saves} saves ago); more steps may not help: check held-out text with "
                  "gpt2.evaluate(sess, 'heldout.txt') or gpt2_simple evaluate heldout.txt")
