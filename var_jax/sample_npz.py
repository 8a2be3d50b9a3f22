"""Evaluation sample sets in the ADM format (``arr_0``: uint8 NHWC images, plus ``labels``).

Classes come in order, ``per_class`` images each (the official FID protocol: 50 per class, 50,000
in all).  Work is done in chunks of ``batch`` images; every finished chunk is kept in
``OUT.npz.parts/`` so an interrupted run resumes where it stopped, and chunk i always uses the
seed fold_in(seed, i), so a resumed run equals an uninterrupted one.  The final file is written
atomically and the parts are then removed.

With several processes (a sampler over a mesh spanning them) every chunk is one global batch split
over all devices; process 0 alone reads and writes files and tells the others which chunks are
left, so no shared file system is needed and the result equals a single-process run's.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from var_jax.cluster import is_main_process
from var_jax.sample import Sampler


def evaluation_labels(num: int, per_class: int, num_classes: int) -> np.ndarray:
    if per_class <= 0 or num <= 0:
        raise ValueError(f"--num and --per-class must be positive, got {num} and {per_class}")
    if num > per_class * num_classes:
        raise ValueError(f"--num {num} is more than --per-class {per_class} × {num_classes} classes "
                         f"= {per_class * num_classes}")
    return np.repeat(np.arange(num_classes), per_class)[:num]


def _atomic_savez(path: pathlib.Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _agree(value: np.ndarray) -> np.ndarray:
    """Process 0's ``value`` on every process (no-op with one process)."""
    return value if jax.process_count() == 1 else np.asarray(multihost_utils.broadcast_one_to_all(value))


def _fetch(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array as one host array on every process."""
    return np.asarray(x) if x.is_fully_addressable else np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _check_parts(out: pathlib.Path, parts: pathlib.Path, plan: dict) -> str:
    """Why this run cannot write ``out`` (process 0's view), or ''."""
    if out.exists():
        return f"{out} exists; choose another --npz (nothing was overwritten)"
    plan_file = parts / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()) != plan:
        return (f"{parts} holds chunks of another run ({plan_file.read_text()}); resume with the same settings or "
                f"choose another --npz")
    return ""


def write_evaluation_npz(sampler: Sampler, out: str | os.PathLike, *, num: int, per_class: int,
                         batch: int | None = None, seed: int = 0) -> pathlib.Path:
    out = pathlib.Path(out)
    labels = evaluation_labels(num, per_class, sampler.num_classes)
    multiple = getattr(sampler, "batch_multiple", 1)  # devices the batch is split over (1: no mesh)
    batch = batch or -(-64 // multiple) * multiple
    if batch % multiple:
        raise ValueError(f"--batch {batch} must be a multiple of {multiple} (the devices the batch is split over)")
    parts = out.with_name(out.name + ".parts")
    plan = {"num": num, "per_class": per_class, "batch": batch, "seed": seed, "settings": repr(sampler.settings)}
    main = is_main_process()
    problem = _check_parts(out, parts, plan) if main else ""
    if _agree(np.int32(bool(problem))):
        raise (FileExistsError if out.exists() else ValueError)(problem or "process 0 cannot write the output "
                                                                          "(see its message)")
    if main:
        parts.mkdir(parents=True, exist_ok=True)
        (parts / "plan.json").write_text(json.dumps(plan))
    chunks = range(0, num, batch)
    part_of = lambda i: parts / f"chunk_{i // batch:06d}.npz"  # noqa: E731
    done = _agree(np.array([main and part_of(i).exists() for i in chunks], bool))
    base = jax.random.key(seed)
    with tqdm(total=num, initial=min(int(done.sum()) * batch, num), unit="img", desc=f"sampling {out.name}",
              disable=not main) as bar:
        for i, finished in zip(chunks, done):
            if finished:
                continue
            chunk = labels[i:i + batch]
            if len(chunk) < batch:  # keep one compiled shape: pad the last chunk, then drop the padding
                chunk = np.concatenate([chunk, np.full(batch - len(chunk), chunk[-1])])
            result = sampler(chunk, key=jax.random.fold_in(base, i // batch))
            n = min(batch, num - i)
            images = _fetch(result.images)[:n]
            if main:
                _atomic_savez(part_of(i), images=images, labels=chunk[:n])
            bar.update(n)
    if main:
        images = np.concatenate([np.load(part_of(i))["images"] for i in chunks])
        _atomic_savez(out, arr_0=images, labels=labels)
        shutil.rmtree(parts)
        print(f"wrote {out}: {images.shape[0]} images {images.shape[1:]} uint8, labels 0..{labels.max()}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("evaluation npz written")
    return out
