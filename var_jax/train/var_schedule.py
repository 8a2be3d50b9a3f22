"""The official VAR run length and progressive-training schedule, as functions of the global step.

Lengths are counted in epochs as ``train.py`` does: ``iters_per_epoch = ceil(N / batch)``, the
run is ``epochs · iters_per_epoch`` steps, the warm-up ``round(wp · iters_per_epoch)`` with
``wp = epochs / 50`` unless given, and each progressive stage warms its newest scale up over
``pgwp · iters_per_epoch`` steps with ``pgwp = epochs / 300`` unless given (or given in steps:
``train.warmup_iters`` and ``train.pgwp_iters``, the official ``wp_it`` and ``prog_wp_it``).

Progressive training (``pg > 0``): during the warm-up the model sees the first ``pg0 + 1`` scales,
from ``pg · total`` steps on all of them, and in between
``pg0 + round(progress · (SN − 1 − pg0))`` with progress going linearly from 0 to 1 (Python's
``round``, halves to even, as the official code).  The newest scale's loss weight is
``clip(steps in this stage / pgwp steps, 0.01, 1)``, except in the first stage (1).  All of it
depends on the step alone, so a resumed run follows the same schedule without extra state.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class RunLength:
    iters_per_epoch: int
    total_steps: int
    warmup_steps: int         # the learning-rate warm-up: round(wp · iters_per_epoch)
    warmup_exact: float       # wp · iters_per_epoch, what the progressive schedule compares with
    prog_warmup_steps: float  # per progressive stage (a float, as officially)
    epochs: float

    @classmethod
    def of(cls, *, num_images: int, batch_size: int, epochs: float, steps: int = 0, warmup_epochs: float = -1,
           prog_warmup_epochs: float = -1, warmup_iters: float = -1, prog_warmup_iters: float = -1) -> "RunLength":
        """``steps`` > 0 fixes the length in steps (the epochs follow from it); negative warm-ups
        take the official defaults epochs/50 and epochs/300; ``warmup_iters`` / ``prog_warmup_iters``
        >= 0 give them in steps instead (the official ``wp_it`` / ``prog_wp_it``)."""
        if num_images < 1:
            raise ValueError("the training set is empty")
        if batch_size < 1:
            raise ValueError(f"train.batch_size must be at least 1, got {batch_size}")
        iters = math.ceil(num_images / batch_size)
        if steps > 0:
            total, epochs = int(steps), steps / iters
        elif epochs > 0:
            total = round(epochs * iters)
        else:
            raise ValueError(f"give train.epochs > 0 or train.steps > 0 (got epochs={epochs}, steps={steps})")
        wp = epochs / 50 if warmup_epochs < 0 else warmup_epochs
        pgwp = epochs / 300 if prog_warmup_epochs < 0 else prog_warmup_epochs
        wp_it = wp * iters if warmup_iters < 0 else float(warmup_iters)
        pgwp_it = pgwp * iters if prog_warmup_iters < 0 else float(prog_warmup_iters)
        warmup = round(wp_it)
        if warmup >= total:
            raise ValueError(f"the warm-up ({warmup} steps) must be shorter than the run ({total} steps)")
        return cls(iters, max(total, 1), warmup, wp_it, pgwp_it, epochs)

    @classmethod
    def of_config(cls, train, num_images: int) -> "RunLength":
        """The length of a run with the ``train`` config section over ``num_images`` images."""
        return cls.of(num_images=num_images, batch_size=int(train.batch_size), epochs=float(train.epochs),
                      steps=int(train.steps), warmup_epochs=float(train.warmup_epochs),
                      prog_warmup_epochs=float(train.pgwp), warmup_iters=float(train.get("warmup_iters", -1)),
                      prog_warmup_iters=float(train.get("pgwp_iters", -1)))


@dataclasses.dataclass(frozen=True)
class Progressive:
    """The progressive schedule of a run with ``num_scales`` scales (``pg`` = 0: off)."""
    pg: float
    pg0: int
    num_scales: int
    length: RunLength

    def __post_init__(self):
        if not 0 <= self.pg <= 1:
            raise ValueError(f"train.pg (the fraction of training spent growing) must be in [0, 1], got {self.pg}")
        if self.pg > 0 and not 0 <= self.pg0 < self.num_scales:
            raise ValueError(f"train.pg0 (the first stage's last scale index) must be in [0, {self.num_scales - 1}], "
                             f"got {self.pg0}")

    def stage(self, step: int) -> int:
        """Index of the last scale trained at ``step`` (``num_scales - 1``: the whole sequence)."""
        last = self.num_scales - 1
        if self.pg <= 0:
            return last
        total, warmup = self.length.total_steps, self.length.warmup_exact
        if step <= warmup:
            return self.pg0
        if step >= total * self.pg:
            return last
        progress = min(max((step - warmup) / (total * self.pg - warmup), 0.0), 1.0)
        return self.pg0 + round(progress * (last - self.pg0))

    def newest_weight(self, step: int) -> float:
        """Loss weight of the newest scale at ``step``."""
        if self.pg <= 0:
            return 1.0
        current = self.stage(step)
        if current == self.stage(0):  # the first stage is warmed up by the learning-rate warm-up
            return 1.0
        lo, hi = 0, step  # the first step of this stage (stage() never decreases)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.stage(mid) < current else (lo, mid)
        steps_in_stage = step - lo + 1
        if self.length.prog_warmup_steps <= 0:
            return 1.0
        return max(min(steps_in_stage / self.length.prog_warmup_steps, 1.0), 0.01)

    def num_scales_at(self, step: int) -> int | None:
        """How many scales the step teacher-forces, None for all (what the compiled step is keyed on)."""
        n = self.stage(step) + 1
        return None if n == self.num_scales else n
