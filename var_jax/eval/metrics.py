"""FID, Inception Score and k-NN precision/recall from Inception features, as the ADM evaluation suite
computes them (guided-diffusion's ``evaluations/evaluator.py``).

- FID: Fréchet distance between Gaussians fitted to the pool features, in float64.
- IS: exp(E[KL(p(y|x) ‖ p(y))]) on splits of 5,000 consecutive images, averaged over the splits.
- Precision/recall: each set's manifold is the union of balls around its points with radius the
  distance to the k-th nearest other point (k = 3); precision is the fraction of samples inside the
  reference manifold, recall the fraction of reference points inside the sample manifold.  A point
  on a ball's boundary counts as inside.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

IS_SPLIT = 5000
NEIGHBOURS = 3


@dataclasses.dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray     # (D,)
    sigma: np.ndarray  # (D, D)

    def __post_init__(self):
        mu, sigma = np.asarray(self.mu, np.float64), np.asarray(self.sigma, np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"statistics need mu (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Mean and (unbiased) covariance of features (N, D)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"statistics need at least 2 feature vectors (N, D), got shape {features.shape}")
    return GaussianStats(features.mean(axis=0), np.cov(features, rowvar=False))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½).

    tr (Σa Σb)^½ is the sum of the square roots of the eigenvalues of Σa^½ Σb Σa^½, which is
    symmetric positive semi-definite: one symmetric eigendecomposition instead of the general matrix
    square root, with no imaginary parts to discard on near-singular covariances.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"the statistics have different dimensions: {a.mu.shape[0]} and {b.mu.shape[0]}")
    root = _psd_sqrt(a.sigma)
    eig = np.linalg.eigvalsh(root @ b.sigma @ root)
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def inception_score(probs: np.ndarray, split_size: int = IS_SPLIT) -> float:
    """IS of class probabilities (N, C), averaged over consecutive splits of ``split_size`` (the last
    split may be smaller, as in ADM).  0·log 0 counts as 0."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"the Inception Score needs class probabilities (N, C) with N ≥ 1, got shape {probs.shape}")
    scores = []
    for i in range(0, len(probs), split_size):
        p = probs[i:i + split_size]
        marginal = p.mean(axis=0, keepdims=True)
        kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(np.where(p > 0, marginal, 1.0))), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


@jax.jit
def _sq_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Pairwise squared Euclidean distances (|x|² − 2x·y + |y|², clamped at 0), in float32."""
    xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sum(x * x, axis=1)[:, None] - 2.0 * xy + jnp.sum(y * y, axis=1)[None, :]
    return jnp.maximum(d, 0.0)


def _row_blocks(n: int, block: int):
    return [(i, min(i + block, n)) for i in range(0, n, block)]


def knn_radii(features: np.ndarray, k: int = NEIGHBOURS, block: int = 1024) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point (N,)."""
    features = np.asarray(features, np.float32)
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, got {len(features)}")
    y = jnp.asarray(features)
    out = []
    for i, j in _row_blocks(len(features), block):
        d = _sq_distances(y[i:j], y)
        out.append(np.asarray(-jax.lax.top_k(-d, k + 1)[0][:, k]))  # index 0 is the point itself
    return np.concatenate(out)


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> np.ndarray:
    """For each point: whether it lies in some ball (centre, radius²)."""
    c, r = jnp.asarray(centres, jnp.float32), jnp.asarray(radii, jnp.float32)
    p = jnp.asarray(points, jnp.float32)
    return np.concatenate([np.asarray(jnp.any(_sq_distances(p[i:j], c) <= r[None, :], axis=1))
                           for i, j in _row_blocks(len(points), block)])


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = NEIGHBOURS,
                     block: int = 1024) -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference``, both (N, D) features."""
    if reference.ndim != 2 or samples.ndim != 2 or reference.shape[1] != samples.shape[1]:
        raise ValueError(f"precision/recall needs two feature sets (N, D) of the same D, got {reference.shape} "
                         f"and {samples.shape}")
    ref_radii, sample_radii = knn_radii(reference, k, block), knn_radii(samples, k, block)
    precision = _inside(samples, reference, ref_radii, block).mean()
    recall = _inside(reference, samples, sample_radii, block).mean()
    return float(precision), float(recall)
