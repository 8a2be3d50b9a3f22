"""Transposes that a CPU's bfloat16 products take as row-major operands."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compiled_products
from var_jax.ops.transpose import moved, transposed


@pytest.mark.parametrize("shape", [(5, 3), (2, 7, 4)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_it_is_the_transpose_of_the_last_two_axes(shape, dtype):
    a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape).astype(dtype)
    ours = jax.jit(transposed)(a)
    assert ours.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.swapaxes(np.asarray(a, np.float32), -1, -2))


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 2, 3, 1), (3, 1, 0, 2)])
def test_moved_is_the_transpose(perm):
    a = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5).astype(jnp.bfloat16)
    ours = jax.jit(lambda a: moved(a, perm))(a)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.transpose(np.asarray(a, np.float32), perm))


def _product(x, g):
    return jnp.matmul(transposed(x), g, preferred_element_type=jnp.float32)


def test_a_cpu_multiplies_it_as_a_row_major_operand_of_its_own_dtype():
    x = jax.ShapeDtypeStruct((96, 64), jnp.bfloat16)
    g = jax.ShapeDtypeStruct((96, 128), jnp.bfloat16)
    row_major = jax.ShapeDtypeStruct((64, 96), jnp.bfloat16)
    plain = compiled_products(lambda a, g: jnp.matmul(a, g, preferred_element_type=jnp.float32), row_major, g)
    # xᵀ (64, 96) · g (96, 128) as the product of a row-major array: contracting dims 1 and 0, and
    # operands in whatever dtype this machine's XLA multiplies an untransposed bfloat16 product
    # (bfloat16 where its CPU backend has a bfloat16 kernel).
    assert compiled_products(_product, x, g) == plain and plain[0][1:] == ("1", "0")
    rng = np.random.default_rng(0)
    xs, gs = (jnp.asarray(rng.normal(size=s.shape), jnp.bfloat16) for s in (x, g))
    want = np.asarray(xs, np.float64).T @ np.asarray(gs, np.float64)
    # Exact bfloat16 products accumulated in float32 over 96 terms: float32 sums of order-ten values.
    np.testing.assert_allclose(np.asarray(jax.jit(_product)(xs, gs)), want, rtol=0, atol=1e-4)


def test_other_platforms_get_a_plain_transpose():
    x = jax.ShapeDtypeStruct((96, 64), jnp.bfloat16)
    text = jax.jit(transposed).trace(x).lower(lowering_platforms=("tpu",)).as_text()
    assert "stablehlo.transpose" in text and "96x64x1" not in text
    assert "96x64x1" in jax.jit(transposed).lower(x).as_text()
