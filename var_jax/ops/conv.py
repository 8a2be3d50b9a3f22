"""The tokenizer's convolutions, with a faster form for its large bfloat16 maps on a CPU.

XLA's CPU backend runs a bfloat16 convolution at about its float32 rate, while its bfloat16 matrix
products run faster (twice float32's rate where the CPU has AVX-512 BF16).  So on a CPU a bfloat16
3×3 convolution of stride 1 and padding 1 over a map of at least ``MIN_POSITIONS`` positions and
``MIN_IN_CHANNELS`` channels is computed as nine products of shifted views of the input with the
kernel's taps, accumulated in float32.  On a 2-core AMD EPYC with AVX-512 BF16 a convolution of
VAR-d16's decoder at 256×256 with 160 channels took 126 ms against 162 ms, and the decode of one
image 1.96-2.09 s against 2.35-2.38 s (1.99-2.01 s with the products on every map).  Smaller maps
keep the convolution for the compile time: with their products too the decoder compiled in 7.3-7.9 s
against 4.0-5.2 s.  So does an image's first convolution: nine products contracting 3 channels took
2-4× as long as the convolution.  In float32 XLA's own convolution is the faster (1.3×), and other
backends run it well: the choice is made when the program is lowered for its platform
(``lax.platform_dependent``), so a program compiled on a CPU for a TPU keeps the convolution.  The
gradients are the convolution's own: through the nine products they took 1.45× as long.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MIN_POSITIONS = 128 * 128
MIN_IN_CHANNELS = 64  # measured: 3 (slower), 160 (faster)
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _same_3x3(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """XLA's 3×3 convolution of an NHWC input with an HWIO kernel, stride 1, padding 1."""
    return lax.conv_general_dilated(lhs, rhs, (1, 1), [(1, 1), (1, 1)], dimension_numbers=_NHWC)


def _taps_as_products(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The same convolution as nine products, accumulated in float32 and rounded once."""
    H, W = lhs.shape[1:3]
    padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(jnp.einsum("bhwc,co->bhwo", padded[:, i:i + H, j:j + W], rhs[i, j], preferred_element_type=jnp.float32)
              for i in range(3) for j in range(3))
    return out.astype(lhs.dtype)


@jax.custom_vjp
def same_3x3_bfloat16(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """A bfloat16 :func:`_same_3x3`: nine products when lowered for a CPU, the convolution elsewhere."""
    return lax.platform_dependent(lhs, rhs, cpu=_taps_as_products, default=_same_3x3)


def _forward(lhs, rhs):
    return same_3x3_bfloat16(lhs, rhs), (lhs, rhs)


def _backward(residuals, cotangent):
    return jax.vjp(_same_3x3, *residuals)[1](cotangent)


same_3x3_bfloat16.defvjp(_forward, _backward)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None, preferred_element_type=None, out_sharding=None) -> jax.Array:
    """``lax.conv_general_dilated`` (as ``nnx.Conv`` calls it), where a bfloat16 3×3 convolution of
    stride 1 and padding 1 on a large NHWC map of many channels is :func:`same_3x3_bfloat16`."""
    if (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and dimension_numbers == _NHWC and tuple(window_strides) == (1, 1)
            and not isinstance(padding, str) and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) and feature_group_count == 1
            and precision is None and out_sharding is None and preferred_element_type in (None, jnp.bfloat16)
            and lhs.dtype == rhs.dtype == jnp.bfloat16
            and lhs.shape[1] * lhs.shape[2] >= MIN_POSITIONS and lhs.shape[3] >= MIN_IN_CHANNELS):
        return same_3x3_bfloat16(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type, out_sharding=out_sharding)
