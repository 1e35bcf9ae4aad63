"""Ctrl-C and SIGTERM during training: a request to save and stop, checked between steps.

This module owns turning SIGINT (Ctrl-C, Colab's interrupt button) and SIGTERM (preemption) into
a flag the loop in `train.py` reads, so a save never records a half-finished step. It installs
its handlers only around the loop and restores the previous ones after.
"""
import signal
import threading


class StopOnSignal:
    """Turn SIGINT (Ctrl-C, Colab's interrupt) and SIGTERM (preemption) into a request to save and stop.

    The loop checks `requested` between steps, so a save never records a half-finished step. A
    second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
