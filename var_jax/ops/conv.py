"""The tokenizer's 3×3 convolutions, in the forms XLA's CPU backend runs fastest.

A 3×3 convolution of stride 1 and padding 1 of an input of at least ``MIN_CHANNELS`` channels
(:func:`same_3x3`) takes one of these forms when its program is lowered for a CPU
(``lax.platform_dependent``: a program compiled on a CPU for a TPU keeps the convolution, which
other backends run well). Times on a 2-core AMD EPYC with AVX-512 BF16:

- To at least ``MIN_CHANNELS`` channels on at least ``MIN_WINOGRAD_PIXELS`` of even height and
  width (one bfloat16 image: ``MIN_WINOGRAD_PIXELS_ONE_BFLOAT16_IMAGE``): Winograd's F(2×2, 3×3)
  (Lavin and Gray, 2016). Each 2×2 output tile comes from a 4×4 input tile by 16 products of C × O
  where the convolution does 36, 2.25 times fewer multiplications. The tiles' transforms run in
  float32, each rounded once to the products' dtype; the products accumulate in float32. Against
  XLA's convolution in float32: 122 against 160 ms at 256×256 with 160 channels, 97 against 146 ms
  at 128×128 with 320; in bfloat16, against the taps' product below: 76 against 127 and 61 against
  112 ms. The float32 results differ from the convolution's by at most 4.3e-6 at those shapes
  (inputs of unit variance). The temporaries are 4 times the input in the products' dtype and 4
  times the output in float32. Each such convolution is some 34 small kernels to compile: VAR-d16's
  decode of one image compiled in 10.9 s with them at every size, 6.7 s from 64×64 up and 1.3 s
  without them, and ran in 1.44, 1.63 and 2.22 s in float32. XLA compiles bfloat16 programs more
  slowly: the bfloat16 sampler at batch 8, whose decode takes one image at a time, compiled in 16.0
  s with them from 64×64 up and in 13.3 s from 128×128 up, and ran as fast (3.53 and 3.55 s an
  image).
- To fewer channels (the decoder's last, to an image's 3), and for one bfloat16 image below
  Winograd's size: one product of the input with the nine taps side by side (K = C, N = 9·O),
  accumulated in float32, whose nine shifted slices are summed and rounded once. At 256×256 from
  160 to 3 channels 12 against 34 ms in float32 and 6 against 34 ms in bfloat16 (Winograd's 49 and
  30 ms); at 16×16 with 640 channels in bfloat16 7 against 13 ms (in float32 13 against 12 ms). Its
  float32 output, nine outputs of the convolution, is why of the wide convolutions only one
  bfloat16 image's take it.
- Otherwise XLA's convolution. An input of 3 channels keeps it: Winograd's took 29 against 13 ms for
  3 to 160 channels at 256×256.

The gradients are the convolution's own.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MIN_CHANNELS = 32  # measured: 3 (slower in either form), 32 to 640 (faster)
MIN_WINOGRAD_PIXELS = 64 * 64  # below, Winograd's form compiles in more time than it saves (above)
MIN_WINOGRAD_PIXELS_ONE_BFLOAT16_IMAGE = 128 * 128  # below, the taps' product: as fast, compiled sooner
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))

# F(2×2, 3×3): input tile d (4×4) -> Bᵀ·d·B, kernel g (3×3) -> G·g·Gᵀ, product m -> Aᵀ·m·A (2×2).
_B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_A_T = ((1, 1, 1, 0), (0, 1, -1, -1))


def _same_3x3(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """XLA's 3×3 convolution of an NHWC input with an HWIO kernel, stride 1, padding 1."""
    return lax.conv_general_dilated(lhs, rhs, (1, 1), [(1, 1), (1, 1)], dimension_numbers=_NHWC)


def _combine(coefficients, terms):
    """Σ c·t over the nonzero coefficients, a coefficient of ±1 as an addition or subtraction."""
    total = None
    for c, t in zip(coefficients, terms):
        if c:
            t = t if c == 1 else -t if c == -1 else c * t
            total = t if total is None else total + t
    return total


def _winograd(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The convolution as F(2×2, 3×3); H and W even.  The 16 products are separate: as one batched
    product of the stacked tiles it took 180 against 124 ms (float32, 256×256 with 160 channels)."""
    (_, H, W, _), f32 = lhs.shape, jnp.float32
    padded = jnp.pad(lhs.astype(f32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [padded[:, a:a + H:2] for a in range(4)]  # row a of every tile
    rows = [_combine(b, rows) for b in _B_T]
    tiles = [[_combine(b, [r[:, :, a:a + W:2] for a in range(4)]).astype(lhs.dtype) for b in _B_T] for r in rows]
    kernel = [_combine(g, list(rhs.astype(f32))) for g in _G]
    kernel = [[_combine(g, list(k)).astype(lhs.dtype) for g in _G] for k in kernel]
    products = [[jnp.einsum("bhwc,co->bhwo", t, k, preferred_element_type=f32) for t, k in zip(ts, ks)]
                for ts, ks in zip(tiles, kernel)]
    rows = [[_combine(a, column) for column in zip(*products)] for a in _A_T]  # [a][j]: output row a, column j
    out = jnp.stack([jnp.stack([_combine(a, r) for a in _A_T], axis=3) for r in rows], axis=2)
    return out.reshape(*lhs.shape[:3], rhs.shape[-1]).astype(lhs.dtype)


def _taps_product(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The convolution as one product with the nine taps (K = C, N = 9·O), accumulated in float32;
    each output sums nine shifted slices of it, then rounds once."""
    (_, H, W, C), O = lhs.shape, rhs.shape[-1]
    padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = jnp.einsum("bhwc,cto->bhwto", padded, rhs.reshape(9, C, O).transpose(1, 0, 2),
                      preferred_element_type=jnp.float32)
    return sum(taps[:, i:i + H, j:j + W, 3 * i + j] for i in range(3) for j in range(3)).astype(lhs.dtype)


def _cpu_form(lhs: jax.Array, rhs: jax.Array):
    """Which of the forms above a CPU runs for this input and kernel."""
    (batch, H, W, _), O = lhs.shape, rhs.shape[-1]
    one_bfloat16_image = lhs.dtype == jnp.bfloat16 and batch == 1
    if O < MIN_CHANNELS or one_bfloat16_image and H * W < MIN_WINOGRAD_PIXELS_ONE_BFLOAT16_IMAGE:
        return _taps_product
    return _winograd if H * W >= MIN_WINOGRAD_PIXELS and H % 2 == W % 2 == 0 else _same_3x3


@jax.custom_vjp
def same_3x3(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """:func:`_same_3x3` of an input of at least ``MIN_CHANNELS`` channels, in the form
    :func:`_cpu_form` chooses when lowered for a CPU."""
    return lax.platform_dependent(lhs, rhs, cpu=_cpu_form(lhs, rhs), default=_same_3x3)


def _forward(lhs, rhs):
    return same_3x3(lhs, rhs), (lhs, rhs)


def _backward(residuals, cotangent):
    return jax.vjp(_same_3x3, *residuals)[1](cotangent)


same_3x3.defvjp(_forward, _backward)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None, preferred_element_type=None, out_sharding=None) -> jax.Array:
    """``lax.conv_general_dilated`` (as ``nnx.Conv`` calls it), where a 3×3 convolution of stride 1
    and padding 1 of an NHWC input of enough channels is :func:`same_3x3`."""
    if (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and dimension_numbers == _NHWC and tuple(window_strides) == (1, 1)
            and not isinstance(padding, str) and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) and feature_group_count == 1
            and precision is None and out_sharding is None and preferred_element_type in (None, lhs.dtype)
            and lhs.dtype == rhs.dtype and lhs.shape[3] >= MIN_CHANNELS):
        return same_3x3(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type, out_sharding=out_sharding)
