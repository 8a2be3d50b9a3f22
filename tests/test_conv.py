"""The tokenizer's convolutions: for one bfloat16 image on a CPU one product with the nine taps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.ops.conv import MIN_IN_CHANNELS, conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, stride=1, padding=1):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return conv(x, w, (stride, stride), [(padding, padding)] * 2, dimension_numbers=dn)


def _xla(x, w):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=dn)


def _operands(seed, side=24, dtype=jnp.bfloat16, channels=MIN_IN_CHANNELS, batch=1):
    x = jax.random.normal(jax.random.key(seed), (batch, side, side, channels)).astype(dtype)
    w = (jax.random.normal(jax.random.key(seed + 9), (3, 3, channels, 8)) / 12).astype(dtype)
    return x, w


@pytest.mark.parametrize("seed", [0, 1])
def test_one_bfloat16_image_is_one_product_rounded_like_the_convolution(seed):
    x, w = _operands(seed)
    lowered = jax.jit(_conv).lower(x, w)
    assert "convolution" not in lowered.as_text()
    ours = lowered.compile()(x, w)
    assert ours.dtype == jnp.bfloat16
    exact = _xla(x.astype(jnp.float32), w.astype(jnp.float32))
    # Accumulated in float32 and rounded once to bfloat16: one rounding moves an output by at most
    # 2^-8 of itself (half of bfloat16's step), so by at most 2^-8 of the largest output; measured
    # 2.4e-3 to 3.3e-3 (seeds 0 to 7), where a float32 sum alone differs by about 1.6e-7.
    assert float(jnp.abs(ours.astype(jnp.float32) - exact).max()) <= 2 ** -8 * float(jnp.abs(exact).max())


def test_its_gradients_are_the_convolutions():
    x, w = _operands(2)
    cotangent = jax.random.normal(jax.random.key(5), (1, *x.shape[1:3], 8)).astype(jnp.bfloat16)
    backward = jax.jit(lambda a, b: jax.vjp(_conv, a, b)[1](cotangent))
    assert "convolution" in backward.lower(x, w).as_text()  # the transposed convolutions, not the product's
    ours = backward(x, w)
    theirs = jax.jit(lambda a, b: jax.vjp(_xla, a, b)[1](cotangent))(x, w)
    for a, b in zip(ours, theirs):  # the same backward program: equal up to bfloat16's last place
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2 ** -7, atol=1e-6)


def test_batches_few_channels_float32_strides_and_other_platforms_keep_the_convolution():
    for x, w in (_operands(0, batch=2), _operands(0, channels=MIN_IN_CHANNELS // 2), _operands(0, dtype=jnp.float32)):
        assert "convolution" in jax.jit(_conv).lower(x, w).as_text()
    x, w = _operands(0)
    strided = jax.jit(lambda a, b: _conv(a, b, stride=2, padding=0))
    assert "convolution" in strided.lower(x, w).as_text()
    assert "convolution" in jax.jit(_conv).trace(x, w).lower(lowering_platforms=("tpu",)).as_text()
