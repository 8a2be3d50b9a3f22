"""PyTorch-exact resizes between scales, as per-axis matrices applied to NHWC maps.

Both resizes VAR uses are separable, so ``resize(x) = M_h · x · M_wᵀ`` for each channel.  The
matrices are built in float64 NumPy at trace time (they depend only on static sizes) and become
constants of the compiled program.  ``jax.image.resize`` does not match PyTorch here: its cubic
kernel is Keys with a = -0.5 and its area mode is not adaptive pooling.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

BICUBIC_A = -0.75  # PyTorch's cubic convolution coefficient


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of ``F.interpolate(mode='area')``, i.e. adaptive average pooling.

    Output i averages inputs floor(i·n_in/n_out) .. ceil((i+1)·n_in/n_out) - 1; the windows overlap
    when the sizes do not divide.
    """
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil division in integers
        m[i, start:end] = 1.0 / (end - start)
    return m


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position t in [0, 1)."""
    a = BICUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of ``F.interpolate(mode='bicubic', align_corners=False)``.

    The source coordinate (i + 0.5)·n_in/n_out - 0.5 is not clamped; the four taps are, which
    replicates the border.
    """
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        for offset, w in zip(range(-1, 3), _cubic_weights(src - base)):
            m[i, min(max(base + offset, 0), n_in - 1)] += w
    return m


@functools.lru_cache(maxsize=None)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of ``F.interpolate(mode='bilinear', align_corners=False)``.

    Unlike the cubic case, PyTorch clamps a negative source coordinate to 0.
    """
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(math.floor(src), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


_MATRICES = {"area": area_matrix, "bicubic": bicubic_matrix, "bilinear": bilinear_matrix}


def resize(x: jax.Array, size: int | tuple[int, int], mode: str) -> jax.Array:
    """Resize an NHWC map to ``size`` (an int for square, or (h, w)) with PyTorch's ``mode``."""
    if mode not in _MATRICES:
        raise ValueError(f"resize mode must be one of {sorted(_MATRICES)}, got {mode!r}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = x.shape[-3], x.shape[-2]
    if (in_h, in_w) == (out_h, out_w):
        return x
    build = _MATRICES[mode]
    m_h = jnp.asarray(build(in_h, out_h), x.dtype)
    m_w = jnp.asarray(build(in_w, out_w), x.dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", m_h, x, precision=hp)
    return jnp.einsum("pw,...owc->...opc", m_w, x, precision=hp)
