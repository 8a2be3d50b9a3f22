"""The tokenizer's convolutions, with a faster form for one bfloat16 image on a CPU.

XLA's CPU backend runs a bfloat16 convolution at about its float32 rate, while its bfloat16 matrix
products run faster (twice float32's rate where the CPU has AVX-512 BF16).  So on a CPU a bfloat16
3×3 convolution of stride 1 and padding 1 of one image with at least ``MIN_IN_CHANNELS`` channels
is one product of the input with all nine taps side by side, accumulated in float32, whose nine
shifted slices are summed and rounded once.  On a 2-core AMD EPYC with AVX-512 BF16: at 256×256
with 160 channels 133 ms against 164 ms; at 16×16 with 640, 7.4 against 19.1 ms; the decoder's last
convolution to 3 channels 4.9 against 35 ms; VAR-d16's decode of one image 1.77 s against 2.35-2.38 s
(compiled in 2.8-3.4 s against 3.0-3.2 s).  The product's float32 output, nine outputs of the
convolution, adds about 320 MB of temporaries at 256×256 with 160 channels, which is why only one
image at a time (the sampler's decode on a CPU) takes this form.  An image's 3 channels do not:
44 against 16 ms.  In float32 XLA's own convolution was the faster (1.3× nine products, one a
tap), and other backends run it well: the choice is made when the program is lowered for its platform
(``lax.platform_dependent``), so a program compiled on a CPU for a TPU keeps the convolution.  The
gradients are the convolution's own: through nine products, one a tap, they took 1.45× as long.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MIN_IN_CHANNELS = 32  # measured: 3 (slower), 32 to 640 (faster)
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _same_3x3(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """XLA's 3×3 convolution of an NHWC input with an HWIO kernel, stride 1, padding 1."""
    return lax.conv_general_dilated(lhs, rhs, (1, 1), [(1, 1), (1, 1)], dimension_numbers=_NHWC)


def _taps_product(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The same convolution as one product with the nine taps (K = C, N = 9·O), accumulated in
    float32; each output sums nine shifted slices of it, then rounds once."""
    (_, H, W, C), O = lhs.shape, rhs.shape[-1]
    padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = jnp.einsum("bhwc,cto->bhwto", padded, rhs.reshape(9, C, O).transpose(1, 0, 2),
                      preferred_element_type=jnp.float32)
    return sum(taps[:, i:i + H, j:j + W, 3 * i + j] for i in range(3) for j in range(3)).astype(lhs.dtype)


@jax.custom_vjp
def same_3x3_bfloat16(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """A bfloat16 :func:`_same_3x3`: the taps' product when lowered for a CPU, the convolution elsewhere."""
    return lax.platform_dependent(lhs, rhs, cpu=_taps_product, default=_same_3x3)


def _forward(lhs, rhs):
    return same_3x3_bfloat16(lhs, rhs), (lhs, rhs)


def _backward(residuals, cotangent):
    return jax.vjp(_same_3x3, *residuals)[1](cotangent)


same_3x3_bfloat16.defvjp(_forward, _backward)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None, preferred_element_type=None, out_sharding=None) -> jax.Array:
    """``lax.conv_general_dilated`` (as ``nnx.Conv`` calls it), where a bfloat16 3×3 convolution of
    stride 1 and padding 1 of one NHWC image of enough channels is :func:`same_3x3_bfloat16`."""
    if (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and dimension_numbers == _NHWC and tuple(window_strides) == (1, 1)
            and not isinstance(padding, str) and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) and feature_group_count == 1
            and precision is None and out_sharding is None and preferred_element_type in (None, jnp.bfloat16)
            and lhs.dtype == rhs.dtype == jnp.bfloat16
            and lhs.shape[0] == 1 and lhs.shape[3] >= MIN_IN_CHANNELS):
        return same_3x3_bfloat16(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type, out_sharding=out_sharding)
