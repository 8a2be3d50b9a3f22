"""Evaluation sample sets in the ADM format (``arr_0``: uint8 NHWC images, plus ``labels``).

Classes come in order, ``per_class`` images each (the official FID protocol: 50 per class, 50,000
in all).  Work is done in chunks of ``batch`` images; every finished chunk is kept in
``OUT.npz.parts/`` so an interrupted run resumes where it stopped, and chunk i always uses the
seed fold_in(seed, i), so a resumed run equals an uninterrupted one.  The final file is written
atomically and the parts are then removed.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import numpy as np
from tqdm import tqdm

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


def write_evaluation_npz(sampler: Sampler, out: str | os.PathLike, *, num: int, per_class: int,
                         batch: int | None = None, seed: int = 0) -> pathlib.Path:
    out = pathlib.Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --npz (nothing was overwritten)")
    labels = evaluation_labels(num, per_class, sampler.num_classes)
    batch = batch or 64
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    plan = {"num": num, "per_class": per_class, "batch": batch, "seed": seed, "settings": repr(sampler.settings)}
    plan_file = parts / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()) != plan:
        raise ValueError(f"{parts} holds chunks of another run ({plan_file.read_text()}); resume with the same "
                         f"settings or choose another --npz")
    plan_file.write_text(json.dumps(plan))
    chunks = range(0, num, batch)
    done = sum((parts / f"chunk_{i // batch:06d}.npz").exists() for i in chunks)
    base = jax.random.key(seed)
    with tqdm(total=num, initial=min(done * batch, num), unit="img", desc=f"sampling {out.name}") as bar:
        for i in chunks:
            part = parts / f"chunk_{i // batch:06d}.npz"
            if part.exists():
                continue
            chunk = labels[i:i + batch]
            if len(chunk) < batch:  # keep one compiled shape: pad the last chunk, then drop the padding
                chunk = np.concatenate([chunk, np.full(batch - len(chunk), chunk[-1])])
            result = sampler(chunk, key=jax.random.fold_in(base, i // batch))
            n = min(batch, num - i)
            _atomic_savez(part, images=np.asarray(result.images)[:n], labels=chunk[:n])
            bar.update(n)
    images = np.concatenate([np.load(parts / f"chunk_{i // batch:06d}.npz")["images"] for i in chunks])
    _atomic_savez(out, arr_0=images, labels=labels)
    shutil.rmtree(parts)
    print(f"wrote {out}: {images.shape[0]} images {images.shape[1:]} uint8, labels 0..{labels.max()}")
    return out
