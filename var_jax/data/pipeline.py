"""Grain input pipelines for training on images: deterministic, checkpointable, sharded per process.

Training: shuffle (a new order every epoch, from the seed) → this process's share → decode →
random crop → valid examples batched.  Evaluation: a source in order → this process's share → decode →
centre crop → the first ``num_images`` valid examples, batched.  An image that cannot be read is dropped and counted, never fatal; the count
(``skipped``) travels in every batch and in the iterator state, so it survives a resume.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import pathlib
from typing import Any

import grain
import jax
import numpy as np
from PIL import Image

from var_jax.data import embedded
from var_jax.data.sources import ArrayImages, ImageFolder, TfdsImages
from var_jax.data.transforms import load_rgb, resize_center_crop, resize_random_crop

log = logging.getLogger(__name__)
DATASETS = (*embedded.NAMES, "folder", "imagenet")
_REPORTED_ERRORS = 5  # the first few unreadable images are logged by name; the rest only counted


def sources(data) -> tuple[Any, Any]:
    """(training source, held-out source) for a ``data`` config section (see configs/vqvae_*.py)."""
    name = data.name
    if name in embedded.NAMES:
        return ArrayImages.embedded(name, "train"), ArrayImages.embedded(name, "heldout")
    if name == "folder":
        if not data.root:
            raise ValueError("data.name='folder' needs data.root=DIR holding DIR/<class>/<images>")
        if data.eval_root:
            return ImageFolder(data.root, "all"), ImageFolder(data.eval_root, "all")
        root = pathlib.Path(data.root)
        if (root / "train").is_dir() and (root / "val").is_dir():  # the official layout: root/{train,val}/<class>
            return ImageFolder(root / "train", "all"), ImageFolder(root / "val", "all")
        return ImageFolder(data.root, "train"), ImageFolder(data.root, "heldout")
    if name == "imagenet":
        return (TfdsImages("imagenet2012", "train", data.root),
                TfdsImages("imagenet2012", "validation", data.root))
    raise ValueError(f"unknown data.name {name!r}; choose one of {DATASETS}")


def decode(image) -> Image.Image:
    """A source's image (RGB uint8 array, file path or encoded bytes) as an RGB picture; ValueError
    if it cannot be read."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    if isinstance(image, (bytes, bytearray)):
        return load_rgb(io.BytesIO(image))
    return load_rgb(image)


@dataclasses.dataclass(frozen=True)
class _Crop:
    """Decode and crop one record; an unreadable image becomes ``{"error": message}``."""
    size: int
    train: bool
    hflip: bool = False

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        try:
            img = decode(record["image"])
        except ValueError as e:
            return {"error": str(e)}
        img = resize_random_crop(img, self.size, rng, self.hflip) if self.train else resize_center_crop(img, self.size)
        return {"image": np.asarray(img, np.uint8), "label": np.int32(record["label"])}


class ValidBatches(grain.IterDataset):
    """Batches of ``batch_size`` readable examples (at most ``num_batches`` of them); unreadable ones
    are skipped and counted.  ``give_up_after`` unreadable images in a row (e.g. a whole epoch of an
    endless stream) raise an error instead of searching forever."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, num_batches: int | None = None,
                 give_up_after: int | None = None):
        super().__init__(parent)
        self.batch_size, self.num_batches, self.give_up_after = batch_size, num_batches, give_up_after

    def __iter__(self) -> "_ValidBatchIterator":
        return _ValidBatchIterator(self._parent.__iter__(), self.batch_size, self.num_batches, self.give_up_after)

    def __str__(self) -> str:
        return f"ValidBatches(batch_size={self.batch_size}, num_batches={self.num_batches})"


class _ValidBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, num_batches: int | None,
                 give_up_after: int | None):
        super().__init__(parent)
        self.batch_size, self.num_batches, self.give_up_after = batch_size, num_batches, give_up_after
        self.skipped = self.produced = 0

    def __next__(self) -> dict:
        if self.num_batches is not None and self.produced >= self.num_batches:
            raise StopIteration
        images, labels, failed_in_a_row = [], [], 0
        while len(images) < self.batch_size:
            record = next(self._parent)  # StopIteration ends a finite set, dropping a partial batch
            if "error" in record:
                self.skipped += 1
                failed_in_a_row += 1
                if self.skipped <= _REPORTED_ERRORS:
                    log.warning("skipping an unreadable image (%d so far): %s", self.skipped, record["error"])
                if self.give_up_after is not None and failed_in_a_row >= self.give_up_after:
                    raise ValueError(f"{failed_in_a_row} images in a row could not be read (the last: "
                                     f"{record['error']}); check the data set")
                continue
            failed_in_a_row = 0
            images.append(record["image"])
            labels.append(record["label"])
        self.produced += 1
        return {"image": np.stack(images), "label": np.asarray(labels, np.int32), "skipped": np.int64(self.skipped)}

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "skipped": self.skipped, "produced": self.produced}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.skipped, self.produced = int(state["skipped"]), int(state.get("produced", 0))


def _per_process(global_batch: int) -> int:
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"the batch size {global_batch} must be a multiple of the number of processes ({n})")
    return global_batch // n


def train_batches(source, *, image_size: int, batch_size: int, seed: int, hflip: bool = False,
                  num_threads: int = 4) -> grain.IterDataset:
    """An endless stream of this process's training batches (``batch_size`` is global): uint8 images
    (b, size, size, 3), int32 labels and the running count of skipped images."""
    if len(source) == 0:
        raise ValueError("the training set is empty")
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds[jax.process_index()::jax.process_count()]
    ds = ds.random_map(_Crop(image_size, train=True, hflip=hflip))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size))
    return ValidBatches(ds, _per_process(batch_size), give_up_after=len(source))


def eval_batches(source, *, image_size: int, batch_size: int, num_images: int,
                 num_threads: int = 4) -> grain.IterDataset:
    """``num_images`` readable images of ``source`` (the first ones, in order; fewer only if the
    source runs out), centre-cropped, in batches of ``batch_size`` (global; each process gets its
    share); the same images on every pass."""
    if num_images % batch_size:
        raise ValueError(f"the number of evaluation images ({num_images}) must be a multiple of the evaluation "
                         f"batch size ({batch_size})")
    if num_images > len(source):
        raise ValueError(f"{num_images} evaluation images were asked for but the held-out set has {len(source)}")
    ds = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
    ds = ds.map(_Crop(image_size, train=False))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
    return ValidBatches(ds, _per_process(batch_size), num_images // batch_size)
