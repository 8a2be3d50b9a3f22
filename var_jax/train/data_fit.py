"""Settings that depend on the size of the data, checked together before a run builds anything.

A run on a small image folder (tens of images) meets several of them at once: the held-out part is
a few images, smaller than the default evaluation sizes, and a warm-up counted for ImageNet can be
longer than the whole run.  :class:`DataFit` collects every such problem with a value that fits,
and :meth:`DataFit.check` raises one error listing them all, with the overrides to paste.
"""
from __future__ import annotations


class DataFit:
    """``num_train``, ``num_heldout``: the data's sizes (None: not known yet, only the settings' own
    consistency is checked)."""

    def __init__(self, num_train: int | None = None, num_heldout: int | None = None):
        self.num_train, self.num_heldout = num_train, num_heldout
        self.problems: list[str] = []
        self.fixes: dict[str, object] = {}

    def problem(self, key: str, value, why: str, fix) -> None:
        self.problems.append(f"{key}={value}: {why}")
        self.fixes[key] = fix

    def evaluation(self, eval_section, ways: int, *, show: bool = False, lpips: bool = False) -> None:
        """``eval.batch_size`` (a multiple of ``ways``, the data-parallel size) and ``eval.num_images``
        (whole batches) within the held-out set; with ``show``, ``eval.num_show`` within a batch; with
        ``lpips``, ``eval.lpips_images`` whole batches within ``eval.num_images``."""
        ev = eval_section
        held = self.num_heldout if self.num_heldout is not None else max(int(ev.num_images), int(ev.batch_size))
        within = f" and at most the {held} held-out images" if self.num_heldout is not None else ""
        if held < ways:
            self.problems.append(f"the held-out set has {held} images, fewer than the data-parallel size {ways} "
                                 f"(give more held-out images, e.g. data.eval_root=DIR, or fewer devices)")
            return
        batch = int(ev.batch_size)
        if batch < 1 or batch % ways or batch > held:
            fit = max(ways, min(batch, held) // ways * ways)
            self.problem("eval.batch_size", batch, f"must be a positive multiple of the data-parallel size {ways}"
                                                   f"{within}", fit)
            batch = fit
        num = int(ev.num_images)
        if num < batch or num % batch or num > held:
            fit = max(batch, min(num, held) // batch * batch)
            self.problem("eval.num_images", num, f"must be a positive multiple of eval.batch_size={batch}{within}",
                         fit)
            num = fit
        if show and not 1 <= int(ev.num_show) <= batch:
            self.problem("eval.num_show", ev.num_show, f"must be in [1, eval.batch_size={batch}]",
                         min(max(int(ev.num_show), 1), batch))
        if lpips:
            lp = int(ev.lpips_images)
            if not 0 <= lp <= num or lp % batch:
                fit = min(max(lp, 0), num) // batch * batch
                self.problem("eval.lpips_images", lp, f"must be a multiple of eval.batch_size={batch} between 0 "
                                                      f"and eval.num_images={num}", fit)

    def check(self) -> None:
        """Raise one ValueError naming every problem found, if any."""
        if not self.problems:
            return
        fixes = " ".join(f"--config.{k}={v}" for k, v in self.fixes.items())
        what = (f"the config does not fit the data ({self.num_train} training images, {self.num_heldout} held-out)"
                if self.num_heldout is not None else "the config's settings do not fit together")
        raise ValueError(f"{what}; nothing was trained:\n  - "
                         + "\n  - ".join(self.problems)
                         + (f"\nsettings that fit: {fixes}" if fixes else ""))
