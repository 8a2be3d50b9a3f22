"""Training logs: scalars to a JSON-lines file and to TensorBoard event files (through tensorboardX,
so TensorFlow is never imported), images to TensorBoard.  Only process 0 writes."""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = pathlib.Path(workdir)
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")
        self._tb = SummaryWriter(str(self.workdir / TENSORBOARD_DIR))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One JSON line ``{"step": .., "time": .., name: value, ...}`` and one TensorBoard scalar per value."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(name, value, int(step))

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 picture."""
        if self.enabled:
            self._tb.add_image(name, np.asarray(image, np.uint8), int(step), dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class MeanAccumulator:
    """Running means of per-step metrics between two log lines (device values are read only at ``mean``)."""

    def __init__(self):
        self._sums: dict[str, list] = {}

    def add(self, values: Mapping[str, jax.Array]) -> None:
        for k, v in values.items():
            self._sums.setdefault(k, []).append(v)

    def mean(self) -> dict[str, float]:
        """The means since the last call, then starts over."""
        out = {k: float(np.mean(jax.device_get(v))) for k, v in self._sums.items()}
        self._sums = {}
        return out
