"""The fixed held-out split shared by every image set that has no separate validation part."""
from __future__ import annotations

import numpy as np

HELD_OUT_FRACTION = 0.1
SPLIT_SEED = 0
SPLITS = ("train", "heldout", "all")


def split_indices(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` among ``n`` items: 'heldout' is a seeded 10% (the same items every time),
    'train' the other 90%, 'all' everything in order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_held = int(round(HELD_OUT_FRACTION * n))
    return order[:n_held] if split == "heldout" else order[n_held:]
