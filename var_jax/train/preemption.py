"""Stopping a run cleanly on SIGTERM (what schedulers and preemptible machines send before they kill)
and on Ctrl-C (SIGINT).

While :class:`StopOnSignal` is active, either signal only sets a flag; the training loop reads it
between steps, writes a checkpoint and returns.  A second Ctrl-C raises ``KeyboardInterrupt`` at
once (the checkpoint of the step in flight is then not written).  On several processes the flag is
combined, so every process stops after the same step (a process that saves alone would hang the
others).  A stopped run's exit status is :func:`exit_code`: 128 + the signal's number (143 for
SIGTERM, 130 for Ctrl-C), what shells and schedulers read as "killed by that signal".
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopOnSignal:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None  # the first signal this process got
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after this step and saving a checkpoint"
              + (" (Ctrl-C again: stop at once, without it)" if signum == signal.SIGINT else ""), flush=True)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """True once any process got the signal (the same answer on every process)."""
        if jax.process_count() == 1:
            return self.received is not None
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.received is not None))))

    def name(self) -> str:
        """The signal that stopped the run: this process's, or SIGTERM when only another process got one."""
        return signal.Signals(self.received or signal.SIGTERM).name


def exit_code(signal_name: str) -> int:
    """The exit status of a run stopped by ``signal_name`` ('SIGTERM' → 143, 'SIGINT' → 130)."""
    return 128 + int(signal.Signals[signal_name])
