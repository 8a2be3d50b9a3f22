"""Inception features of image sets: one compiled program per input size, batches of a fixed size
(the last one padded), optionally split over the ``data`` axis of a device mesh."""
from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from var_jax.eval.inception import InceptionV3


class Features(NamedTuple):
    pool: np.ndarray           # (N, 2048) float32
    logits: np.ndarray | None  # (N, 1008) float32, None when the weights have no classifier


def _forward(graphdef, state, images):
    return nnx.merge(graphdef, state)(images)


_forward_jit = jax.jit(_forward, static_argnums=0)  # one cache for every extractor on one device


class InceptionFeatures:
    """``InceptionFeatures(model)(images)`` → :class:`Features`; images (N, H, W, 3) uint8.

    With ``mesh`` (a ``jax.sharding.Mesh`` with a ``data`` axis) every batch is split over that axis
    and the weights are replicated, so ``batch_size`` must be a multiple of the axis size.
    """

    def __init__(self, model: InceptionV3, *, batch_size: int = 64, mesh: Mesh | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.with_logits = model.cfg.with_logits
        self._graphdef, state = nnx.split(model)
        if mesh is None:
            self._state, self._run = state, _forward_jit
            return
        if "data" not in mesh.axis_names:
            raise ValueError(f"the mesh has axes {mesh.axis_names}; features are split over an axis named 'data'")
        n = mesh.shape["data"]
        if batch_size % n:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the mesh's data axis ({n} devices)")
        batch, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
        self._state = jax.device_put(state, replicated)
        self._run = jax.jit(_forward, static_argnums=0, in_shardings=(replicated, batch), out_shardings=batch)

    def lower(self, image_shape: tuple[int, int, int]):
        """The program for one batch of (H, W, C) uint8 images, lowered (``.compile()`` it to inspect
        shardings or time compilation)."""
        images = jax.ShapeDtypeStruct((self.batch_size, *image_shape), np.uint8)
        return self._run.lower(self._graphdef, self._state, images)

    def _batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(images)
        if n < self.batch_size:  # one compiled shape: pad, then drop the padding
            images = np.concatenate([images, np.zeros((self.batch_size - n, *images.shape[1:]), images.dtype)])
        pool, logits = self._run(self._graphdef, self._state, images)
        return np.asarray(pool)[:n], None if logits is None else np.asarray(logits)[:n]

    def of_batches(self, batches: Iterable[np.ndarray], total: int | None = None, desc: str = "features") -> Features:
        """Features of a stream of image arrays (each at most ``batch_size`` images, any split)."""
        pools, logits = [], []
        with tqdm(total=total, unit="img", desc=desc) as bar:
            for chunk in batches:
                for i in range(0, len(chunk), self.batch_size):
                    p, l = self._batch(np.asarray(chunk[i:i + self.batch_size]))
                    pools.append(p)
                    logits.append(l)
                    bar.update(len(p))
        if not pools:
            raise ValueError("no images to compute features of")
        return Features(np.concatenate(pools), np.concatenate(logits) if self.with_logits else None)

    def __call__(self, images: np.ndarray) -> Features:
        return self.of_batches([images], total=len(images))
