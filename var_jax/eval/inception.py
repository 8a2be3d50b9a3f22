"""The FID Inception-v3: the network of TensorFlow's 2015-12-05 Inception graph, NHWC.

This is the feature extractor of the ADM evaluation suite (and of pytorch-fid, whose weights file
``pt_inception-2015-12-05-*.pth`` holds the same numbers): Inception-v3 with the graph's own pooling
choices (3×3 average pools that do not count the padding; a max pool in the last block), input of
uint8-range pixels resized to 299×299 with TensorFlow's original bilinear resize, then mapped to
[-1, 1) as (x - 128) / 128.  Outputs are the 2048-d ``pool_3`` features and the 1008 logits that the
Inception Score uses, which (as in the original IS code and ADM) are the features times the
classifier's weight, without its bias.  Parameter names mirror the official PyTorch ones
(``Mixed_5b.branch1x1.conv``) so the converters are renames.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SIZE = 299           # the graph's input side
POOL_DIM = 2048      # pool_3 features
NUM_LOGITS = 1008    # the graph's classifier (1000 ImageNet classes and 8 unused)
BN_EPS = 1e-3
HIGHEST = jax.lax.Precision.HIGHEST  # FID is compared across codebases: no reduced-precision convs


@dataclasses.dataclass(frozen=True)
class InceptionConfig:
    """``with_logits``: whether the classifier weight is present (the TorchScript export has none)."""
    with_logits: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=None)
def tf_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of TensorFlow 1's ``resize_bilinear`` (align_corners=False and no half-pixel
    centres, the op inside the 2015 graph): output i samples input position i·n_in/n_out, the upper
    tap clamped to the last row.  PyTorch's bilinear (``ops.resample.bilinear_matrix``) is shifted by
    half a pixel against this, which changes FID."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = i * n_in / n_out
        lo = min(math.floor(src), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        m[i, lo] += 1.0 - (src - lo)
        m[i, hi] += src - lo
    return m


def resize_to_input(x: jax.Array) -> jax.Array:
    """(B, H, W, C) float → (B, 299, 299, C) with the graph's bilinear resize."""
    h, w = x.shape[1:3]
    if (h, w) == (SIZE, SIZE):
        return x
    m_h = jnp.asarray(tf_bilinear_matrix(h, SIZE), jnp.float32)
    m_w = jnp.asarray(tf_bilinear_matrix(w, SIZE), jnp.float32)
    x = jnp.einsum("oh,bhwc->bowc", m_h, x, precision=HIGHEST)
    return jnp.einsum("pw,bowc->bopc", m_w, x, precision=HIGHEST)


# -- pooling -----------------------------------------------------------------------------------------
def max_pool_3x3(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), p)


def _window_counts(n: int) -> np.ndarray:
    """How many real (unpadded) inputs each 3-wide, stride-1, pad-1 window covers along an axis."""
    counts = np.full(n, 3.0)
    counts[0] -= 1
    counts[-1] -= 1
    return counts if n > 1 else np.ones(1)


def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    """3×3 average, stride 1, padding 1, dividing by the number of real pixels (TensorFlow's SAME)."""
    p = ((0, 0), (1, 1), (1, 1), (0, 0))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
    counts = np.outer(_window_counts(x.shape[1]), _window_counts(x.shape[2]))
    return sums / jnp.asarray(counts, x.dtype)[None, :, :, None]


# -- layers ------------------------------------------------------------------------------------------
class BasicConv(nnx.Module):
    """Convolution without bias → batch norm with stored statistics (ε = 0.001) → ReLU.

    Variables start as placeholders (zero weights, unit variances): the network is only ever used
    with converted weights, and building it needs no random numbers.
    """

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.stride, self.padding = stride, ((ph, ph), (pw, pw))
        self.kernel = nnx.Param(jnp.zeros((kh, kw, cin, cout), jnp.float32))
        self.scale = nnx.Param(jnp.ones((cout,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((cout,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(x, self.kernel[...], (self.stride, self.stride), self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
        y = (y - self.mean[...]) * jax.lax.rsqrt(self.var[...] + BN_EPS) * self.scale[...] + self.bias[...]
        return jax.nn.relu(y)


class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d (35×35): 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int):
        self.branch1x1 = BasicConv(cin, 64, 1)
        self.branch5x5_1 = BasicConv(cin, 48, 1)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
        self.branch_pool = BasicConv(cin, pool_features, 1)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool_3x3_same(x)),
        ], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: the 35 → 17 grid reduction."""

    def __init__(self, cin: int):
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            max_pool_3x3(x, 2),
        ], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e (17×17): factorised 7×7 branches of width ``c7``."""

    def __init__(self, cin: int, c7: int):
        self.branch1x1 = BasicConv(cin, 192, 1)
        self.branch7x7_1 = BasicConv(cin, c7, 1)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv(cin, 192, 1)

    def __call__(self, x):
        dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            dbl = conv(dbl)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(avg_pool_3x3_same(x)),
        ], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: the 17 → 8 grid reduction."""

    def __init__(self, cin: int):
        self.branch3x3_1 = BasicConv(cin, 192, 1)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)

    def __call__(self, x):
        b = x
        for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = conv(b)
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b/7c (8×8): split 1×3 / 3×1 branches.  The graph pools with an average in Mixed_7b and
    with a max in Mixed_7c (``max_pool``), which is what makes the FID network differ from
    torchvision's Inception-v3."""

    def __init__(self, cin: int, max_pool: bool):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv(cin, 320, 1)
        self.branch3x3_1 = BasicConv(cin, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv(cin, 192, 1)

    def __call__(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = max_pool_3x3(x, 1, pad=1) if self.max_pool else avg_pool_3x3_same(x)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], axis=-1)


class InceptionV3(nnx.Module):
    """Images (B, H, W, 3), uint8 or float in [0, 255], any size → (pool (B, 2048), logits (B, 1008) or
    None)."""

    def __init__(self, cfg: InceptionConfig = InceptionConfig()):
        self.cfg = cfg
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        if cfg.with_logits:  # the classifier weight (2048, 1008); its bias is not used (see above)
            self.fc = nnx.Param(jnp.zeros((POOL_DIM, NUM_LOGITS), jnp.float32))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images (B, H, W, 3) with values in [0, 255], got shape {tuple(images.shape)}")
        x = resize_to_input(images.astype(jnp.float32))
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool_3x3(x, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = max_pool_3x3(x, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = jnp.mean(x, axis=(1, 2))  # the graph's 8×8 average pool over the final 8×8 map
        logits = jnp.matmul(pool, self.fc[...], precision=HIGHEST) if self.cfg.with_logits else None
        return pool, logits
