"""Transposes that a CPU's bfloat16 products take as row-major operands."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.ops.transpose import transposed


@pytest.mark.parametrize("shape", [(5, 3), (2, 7, 4)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_it_is_the_transpose_of_the_last_two_axes(shape, dtype):
    a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape).astype(dtype)
    ours = jax.jit(transposed)(a)
    assert ours.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.swapaxes(np.asarray(a, np.float32), -1, -2))


def _product(x, g):
    return jnp.matmul(transposed(x), g, preferred_element_type=jnp.float32)


def test_a_cpu_multiplies_it_in_bfloat16_as_a_row_major_operand():
    x = jax.ShapeDtypeStruct((96, 64), jnp.bfloat16)
    g = jax.ShapeDtypeStruct((96, 128), jnp.bfloat16)
    hlo = jax.jit(_product).lower(x, g).compile().as_text()
    dots = re.findall(r"= f32\[64,128\]\{1,0\} dot\((.*?)\), lhs_contracting_dims=\{(\d)\}, rhs_contracting_dims=\{(\d)\}", hlo)
    assert len(dots) == 1 and dots[0][1:] == ("1", "0")  # x̄ᵀ (64, 96) · g (96, 128), both row-major
    operands = [name.strip().lstrip("%") for name in dots[0][0].split(",")]
    for name in operands:  # the product's own operands are bfloat16, not converted to float32
        assert re.search(rf"%{re.escape(name)} = bf16\[", hlo), name
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
