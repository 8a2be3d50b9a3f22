"""The small image sets shipped inside the package: handwritten digits and emoji.

``digits``: 5,000 MNIST digits (500 per class, 28×28 grey), as RGB.  ``emoji``: 3,758 Twemoji
images at 32×32 on white, labelled with their Unicode category (9 classes).  See the README for
their credits and licences.  Each set has a fixed, seeded held-out part that training never sees.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from var_jax.data.splits import split_indices

_FILES = {"digits": "mnist5k.npz", "emoji": "emoji32.npz"}
NAMES = tuple(_FILES)


@dataclasses.dataclass(frozen=True)
class EmbeddedSet:
    images: np.ndarray   # (N, H, W, 3) uint8
    labels: np.ndarray   # (N,) int32
    class_names: tuple[str, ...]


def load(name: str, split: str = "train") -> EmbeddedSet:
    """``split``: 'train' (90%), 'heldout' (10%, the same images every time) or 'all'."""
    if name not in _FILES:
        raise ValueError(f"unknown embedded set {name!r}; choose one of {sorted(_FILES)}")
    with np.load(pathlib.Path(__file__).parent / "embedded" / _FILES[name]) as f:
        images, labels = f["images"], f["labels"].astype(np.int32)
        names = tuple(str(n) for n in f["class_names"]) if "class_names" in f else tuple(str(i) for i in range(10))
    if images.ndim == 3:  # grey → RGB
        images = np.repeat(images[..., None], 3, axis=-1)
    pick = split_indices(len(images), split)
    return EmbeddedSet(images[pick], labels[pick], names)
