"""Stopping a run cleanly on SIGTERM (what schedulers and preemptible machines send before they kill).

While :class:`StopOnSignal` is active, SIGTERM only sets a flag; the training loop reads it between
steps, writes a checkpoint and returns.  On several processes the flag is combined, so every
process stops after the same step (a process that saves alone would hang the others).
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopOnSignal:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._flag = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        self._flag = True
        print(f"received {signal.Signals(signum).name}: stopping after this step and saving a checkpoint", flush=True)

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
            return self._flag
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self._flag))))
