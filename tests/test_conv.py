"""The tokenizer's 3×3 convolutions on a CPU: Winograd's F(2×2, 3×3), the nine taps' product, or XLA's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.ops.conv import MIN_CHANNELS, MIN_WINOGRAD_PIXELS, MIN_WINOGRAD_PIXELS_ONE_BFLOAT16_IMAGE, conv

NHWC = ("NHWC", "HWIO", "NHWC")
WIDE = int(MIN_WINOGRAD_PIXELS ** 0.5)  # the smallest square sides Winograd's form takes
WIDE_ONE_BFLOAT16_IMAGE = int(MIN_WINOGRAD_PIXELS_ONE_BFLOAT16_IMAGE ** 0.5)


def _conv(x, w, stride=1, padding=1):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return conv(x, w, (stride, stride), [(padding, padding)] * 2, dimension_numbers=dn)


def _xla(x, w):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=dn)


def _operands(seed, side=24, dtype=jnp.bfloat16, channels=MIN_CHANNELS, out=MIN_CHANNELS, batch=1):
    x = jax.random.normal(jax.random.key(seed), (batch, side, side, channels)).astype(dtype)
    w = (jax.random.normal(jax.random.key(seed + 9), (3, 3, channels, out)) / 12).astype(dtype)
    return x, w


def _error_of_largest(x, w):
    """Our largest deviation from the float32 convolution of the same operands, as a fraction of
    the largest output; and the program had no convolution in it."""
    lowered = jax.jit(_conv).lower(x, w)
    assert "convolution" not in lowered.as_text()
    ours = lowered.compile()(x, w)
    assert ours.dtype == x.dtype
    exact = _xla(x.astype(jnp.float32), w.astype(jnp.float32))
    return float(jnp.abs(ours.astype(jnp.float32) - exact).max() / jnp.abs(exact).max())


# Winograd's form, float32: measured 3.6e-7 to 5.7e-7 of the largest output (seeds 0 to 7, batch 1
# and 2), from the transforms' sums in float32; bound 2^-18 (3.8e-6).
# Winograd's form, bfloat16: the transformed tiles and kernels are rounded to bfloat16 before their
# products, where the convolution rounds only its output: measured 4.3e-3 to 5.6e-3 of the largest
# output, the convolution 2.5e-3 to 2.9e-3; bound 2^-6 (1.6e-2).
# The taps' product rounds once, as the convolution does: at most 2^-8 of the largest output (half
# of bfloat16's step); measured 2.2e-3 to 2.9e-3, in float32 2.3e-7 to 2.7e-7.
@pytest.mark.parametrize("dtype,bound", [(jnp.float32, 2 ** -18), (jnp.bfloat16, 2 ** -6)])
@pytest.mark.parametrize("batch", [1, 2])
def test_wide_convolutions_are_winograds_form(dtype, bound, batch):
    side = WIDE_ONE_BFLOAT16_IMAGE if dtype == jnp.bfloat16 and batch == 1 else WIDE
    for seed in (0, 1):
        assert _error_of_largest(*_operands(seed, side=side, dtype=dtype, batch=batch)) <= bound


@pytest.mark.parametrize("dtype,bound", [(jnp.float32, 2 ** -18), (jnp.bfloat16, 2 ** -8)])
def test_few_output_channels_are_the_taps_product(dtype, bound):
    x, w = _operands(3, side=WIDE, dtype=dtype, out=MIN_CHANNELS // 4, batch=2)
    assert _error_of_largest(x, w) <= bound


def test_one_bfloat16_image_below_winograds_size_is_the_taps_product():
    for side in (24, 25, WIDE):
        assert _error_of_largest(*_operands(4, side=side)) <= 2 ** -8


@pytest.mark.parametrize("side,out", [(WIDE, MIN_CHANNELS), (24, MIN_CHANNELS // 4)])
def test_gradients_are_the_convolutions(side, out):
    x, w = _operands(2, side=side, dtype=jnp.float32, out=out)
    cotangent = jax.random.normal(jax.random.key(5), (1, side, side, out))
    backward = jax.jit(lambda a, b: jax.vjp(_conv, a, b)[1](cotangent))
    assert "convolution" in backward.lower(x, w).as_text()  # the transposed convolutions
    ours = backward(x, w)
    theirs = jax.jit(lambda a, b: jax.vjp(_xla, a, b)[1](cotangent))(x, w)
    for a, b in zip(ours, theirs):  # the same backward program
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_the_others_keep_the_convolution():
    """Below Winograd's size: batches of bfloat16 images, float32 images; at its size: odd sides and
    inputs of few channels; strided convolutions; and programs lowered for another platform."""
    for x, w in (_operands(0, batch=2), _operands(0, dtype=jnp.float32), _operands(0, side=WIDE + 1, dtype=jnp.float32),
                 _operands(0, side=WIDE, channels=MIN_CHANNELS // 2, batch=2)):
        assert "convolution" in jax.jit(_conv).lower(x, w).as_text()
    x, w = _operands(0)
    strided = jax.jit(lambda a, b: _conv(a, b, stride=2, padding=0))
    assert "convolution" in strided.lower(x, w).as_text()
    x, w = _operands(0, side=WIDE, dtype=jnp.float32)
    assert "convolution" in jax.jit(_conv).trace(x, w).lower(lowering_platforms=("tpu",)).as_text()
