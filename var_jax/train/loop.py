"""The one training loop every trainer runs: resume, the step, logging, periodic actions (hooks),
checkpoints, SIGTERM, the non-finite-step guard, the progress bar and the final export.

A trainer subclasses :class:`Trainer` and supplies its state (a dict with the counters ``step``,
``skipped`` and ``bad_run``), its data iterator (``batches``: ``next``, ``get_state``,
``set_state``), one :meth:`Trainer.train_step`, :meth:`Trainer.export`, and its periodic actions
with ``add_hook(fn, every=N)`` (``fn(step, writer)``; every N steps and at the run's last step).
Inside the compiled step, :func:`skip_nonfinite` keeps the old state when the loss or the gradient
is not finite and counts it; the loop stops after ``train.max_bad_steps`` such steps in a row and
never checkpoints in the middle of them.  SIGTERM (preemption) saves a checkpoint and returns;
running the same command resumes, bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from tqdm import tqdm

from var_jax.checkpoint import save_pretrained
from var_jax.train.checkpointing import Checkpointer
from var_jax.train.metrics import MeanAccumulator, MetricsWriter
from var_jax.train.preemption import StopOnSignal


class NonFiniteLoss(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def counters() -> dict[str, jax.Array]:
    """The loop's counters at the start of a run: steps taken, steps skipped, and the current run of
    non-finite steps."""
    return {k: jnp.zeros((), jnp.int32) for k in ("step", "skipped", "bad_run")}  # three buffers: donated apart


def skip_nonfinite(old: dict, new: dict, finite: jax.Array) -> dict:
    """Inside a compiled step: ``new`` when ``finite``, else ``old`` unchanged; either way one step
    more, and the skipped-step counters updated."""
    keep = {k: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new[k], old[k])
            for k in new if k not in ("step", "skipped", "bad_run")}
    return dict(keep, step=old["step"] + 1, skipped=old["skipped"] + (~finite).astype(jnp.int32),
                bad_run=jnp.where(finite, 0, old["bad_run"] + 1).astype(jnp.int32))


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_resumable(saved: dict, now: dict, keys: tuple[str, ...], workdir: pathlib.Path) -> None:
    """A checkpoint's configuration agrees with this run's on ``keys`` (dotted; the number of decoding
    threads may differ)."""
    strip = lambda d: {k: v for k, v in d.items() if k != "num_threads"} if isinstance(d, dict) else d  # noqa: E731
    differ = [k for k in keys if strip(_get(saved, k)) != strip(_get(now, k))]
    if differ:
        details = "; ".join(f"{k}: {json.dumps(_get(saved, k))[:200]} there, {json.dumps(_get(now, k))[:200]} now"
                            for k in differ)
        raise ValueError(f"{workdir} holds a checkpoint of another run ({details}). Resume with the same settings or "
                         f"choose a new --workdir (nothing was changed)")


@dataclasses.dataclass
class Hook:
    fn: Callable[[int, MetricsWriter], Any]
    every: int         # steps; < 1: never
    name: str | None   # the last result is returned by train() under this name


class Trainer:
    """The loop; subclasses set ``config``, ``workdir``, ``checkpointer``, ``state``, ``total_steps``
    and implement ``batches``, :meth:`train_step`, :meth:`export_models` and :meth:`progress`."""

    desc = "train"          # the progress bar's label
    export_dir = "model"    # what the run writes at its end, under the work directory
    resume_keys: tuple[str, ...] = ()  # config keys a resumed run must share with its checkpoint

    config: Any
    workdir: pathlib.Path
    checkpointer: Checkpointer
    state: dict
    total_steps: int

    def add_hook(self, fn: Callable[[int, MetricsWriter], Any], every: int, name: str | None = None) -> None:
        """Call ``fn(step, writer)`` after every ``every``-th step and after the run's last step
        (``every`` < 1: never); ``name``: return its last result from :meth:`train`."""
        self.__dict__.setdefault("hooks", []).append(Hook(fn, int(every), name))

    # -- what a trainer supplies ---------------------------------------------------------------------
    @property
    def batches(self):
        raise NotImplementedError

    def train_step(self, step: int, batch: dict) -> dict[str, Any]:
        """Run the compiled step on ``batch`` (updating ``self.state``); its metrics, with ``bad_run``."""
        raise NotImplementedError

    def log_values(self, done: int, batch: dict, means: dict[str, float]) -> dict[str, float]:
        """Scalars logged next to ``means``, the means of the step metrics."""
        return {"data/skipped_images": int(batch["skipped"])}

    def progress(self, means: dict[str, float]) -> dict[str, str]:
        """The progress bar's postfix."""
        return {}

    def export_models(self) -> dict[str, Any]:
        """``save_pretrained``'s arguments for the final model directory."""
        raise NotImplementedError

    # -- the rest is written once --------------------------------------------------------------------
    def step_count(self) -> int:
        return int(self.state["step"])

    def config_json(self) -> dict:
        return json.loads(self.config.to_json())

    def check_resumable(self) -> dict | None:
        """The saved config of a run already in the work directory, after checking it is this one's
        (read before anything is built)."""
        saved = self.checkpointer.saved_config()
        if saved is not None:
            check_resumable(saved, self.config_json(), self.resume_keys, self.workdir)
        return saved

    def resume(self, abstract_state) -> None:
        """Continue the checkpointed run: its state, restored into ``abstract_state``'s layout, and the
        data iterator where it stood."""
        self.state, data_state, _ = self.checkpointer.restore(abstract_state)
        if data_state:
            self.batches.set_state(data_state)
        self.last_good_step = self.step_count()
        print(f"resumed from step {self.last_good_step} in {self.checkpointer.directory}")

    def save(self) -> None:
        self.checkpointer.save(self.step_count(), self.state, data_state=self.batches.get_state(),
                               config=self.config_json())
        self.last_good_step = self.step_count()

    def export(self) -> pathlib.Path | None:
        """Write the model directory (``export_dir``) once."""
        target = self.workdir / self.export_dir
        if target.exists():
            print(f"{target} exists already; not overwritten")
            return None
        if jax.process_index() == 0:
            save_pretrained(target, **self.export_models())
            print(f"wrote {target} (load it with var_jax.load_pretrained)")
        return target

    def check_finite(self, metrics: dict, step: int) -> None:
        bad_run = int(metrics["bad_run"])
        if bad_run >= int(self.config.train.max_bad_steps):
            good = getattr(self, "last_good_step", None)
            raise NonFiniteLoss(
                f"{bad_run} steps in a row up to step {step} had a non-finite loss or gradient; stopped. Their updates "
                f"were not applied. " + (f"The last checkpoint (step {good}) in {self.checkpointer.directory} is "
                                         f"untouched." if good is not None else "No checkpoint had been written.") +
                " Lower the learning rate, raise the warm-up, or use compute_dtype=float32")

    def train(self, until: int | None = None) -> dict[str, Any]:
        """Train to step ``until`` (default: the run's length), logging, running the hooks and
        checkpointing on the way; at the run's end write the model directory.  Returns {"step",
        "stopped_by" (None or "signal"), and each named hook's last result}."""
        t = self.config.train
        total = self.total_steps
        until = total if until is None else min(until, total)
        hooks = self.__dict__.get("hooks", [])
        results: dict[str, Any] = {h.name: {} for h in hooks if h.name}
        writer = MetricsWriter(self.workdir)
        acc, stopped_by, pending, save_due = MeanAccumulator(), None, None, False
        start = self.step_count()
        window_start, window_tic, paused = start, time.perf_counter(), 0.0  # paused: hooks and saving
        try:
            with StopOnSignal() as stop, tqdm(range(start, until), initial=start, total=until, desc=self.desc,
                                               unit="step", disable=jax.process_index() != 0) as bar:
                for step in bar:
                    batch = next(self.batches)
                    metrics = self.train_step(step, batch)
                    if pending is not None:
                        self.check_finite(pending, step)  # the previous step's: the device stays busy meanwhile
                    pending = metrics
                    acc.add({k: v for k, v in metrics.items() if k != "bad_run"})
                    done = step + 1
                    if done % t.log_every == 0 or done == until:
                        means = acc.mean()  # waits for the device: the window's time is complete
                        now = time.perf_counter()
                        means["time/steps_per_s"] = (done - window_start) / max(now - window_tic - paused, 1e-9)
                        means.update(self.log_values(done, batch, means))
                        window_start, window_tic, paused = done, now, 0.0
                        writer.scalars(done, means)
                        bar.set_postfix(self.progress(means))
                    tic = time.perf_counter()
                    for hook in hooks:
                        if hook.every > 0 and (done % hook.every == 0 or done == total):
                            result = hook.fn(done, writer)
                            if hook.name:
                                results[hook.name] = result
                                bar.write(f"step {done}: {hook.name} " + ", ".join(
                                    f"{k} {v:.3f}" for k, v in result.items() if "/" not in k))
                    save_due = save_due or done % t.ckpt_every == 0 or done == until
                    if stop.requested():
                        self.check_finite(pending, done)
                        self.save()
                        stopped_by = "signal"
                        bar.write(f"stopped at step {done} on request; checkpoint in {self.checkpointer.directory}")
                        break
                    if save_due:
                        self.check_finite(pending, done)
                        if int(pending["bad_run"]) == 0:  # never checkpoint in the middle of non-finite steps
                            self.save()
                            save_due = False
                    paused += time.perf_counter() - tic
            if stopped_by is None and self.step_count() >= total:
                self.export()
        finally:
            self.checkpointer.wait()
            writer.close()
        return {"step": self.step_count(), "stopped_by": stopped_by, **results}
