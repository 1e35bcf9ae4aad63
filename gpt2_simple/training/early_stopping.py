"""Early stopping and the best checkpoint: what a run does with its validation losses.

This module owns `keep_best` and `early_stopping_patience`. `EarlyStopping` watches the
validation losses taken on the run's cadence (every `val_every` steps, and before the first
step of a fresh run); a validation at an off-cadence step (the end of an interrupted call) is
shown but not counted, so a resumed run stops where an uninterrupted one would. With
`keep_best`, each new lowest loss writes the weights to `model-best` (and its step and loss to
`best.json`); the `checkpoint` state file never names it, so the latest stays the latest for
gpt-2-simple, and `checkpoint='best'` loads it. Its state travels in the training state of
every save. Validating is `progress.py`'s; the loop is `train.py`'s.
"""
import math
import os

from ..formats import checkpoint, run_record


class EarlyStopping:
    """The lowest validation loss so far, its step, and how many validations since it improved."""

    def __init__(self, patience=None, keep_best=False):
        self.patience, self.keep_best = patience, keep_best
        self.best_loss, self.best_step, self.bad, self.last_step = math.inf, None, 0, -1

    @classmethod
    def of_run(cls, opts, state=None):
        """From `finetune`'s options, continuing the saved training `state` of a resumed run."""
        stopping = cls(opts.early_stopping_patience, opts.keep_best)
        if state and "early_stopping" in state:
            stopping.set_state(state["early_stopping"])
        return stopping

    def observe(self, step, loss):
        """Count the validation loss of `step`; returns (improved, stop). A step seen already is ignored."""
        if step <= self.last_step:
            return False, False
        self.last_step = step
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad = float(loss), int(step), 0
            return True, False
        self.bad += 1
        return False, self.patience is not None and self.bad >= self.patience

    def get_state(self):
        best = None if math.isinf(self.best_loss) else self.best_loss
        return {"best_loss": best, "best_step": self.best_step, "bad": self.bad, "last_step": self.last_step}

    def set_state(self, state):
        best = state.get("best_loss")
        self.best_loss = math.inf if best is None else float(best)
        self.best_step, self.bad, self.last_step = state.get("best_step"), int(state["bad"]), int(state["last_step"])


def after_validation(stopping, step, loss, *, on_cadence, model, run_dir, chief):
    """Count a validation, save `model-best` when it is the lowest; True when the run should stop."""
    if not on_cadence:
        return False
    improved, stop = stopping.observe(step, loss)
    if improved and stopping.keep_best and chief:
        save_best(model, run_dir, step, loss)
    if stop:
        print(f"Stopping early: the validation loss has not improved for {stopping.bad} validations "
              f"(best {stopping.best_loss:.4f} at step {stopping.best_step})")
    return stop


def save_best(model, run_dir, step, loss):
    """`model-best` (OpenAI names, like `model-N`) and `best.json`, each written atomically."""
    print(f"Saving {os.path.join(run_dir, run_record.BEST_CHECKPOINT)} (validation loss {loss:.4f} at step {step})")
    checkpoint.write_bundle(os.path.join(run_dir, run_record.BEST_CHECKPOINT), checkpoint.model_tensors(model))
    run_record.write_best(run_dir, step, loss)
