"""The PyTorch-exact resizes (``var_jax.ops.resample``) against ``F.interpolate`` and basic properties."""
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.ops.resample import area_matrix, bicubic_matrix, bilinear_matrix, resize

# Sizes the fixture recorded: area 16 -> s and bicubic s -> 16.
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15]
# float32 matmuls with exact float64 matrices: errors are a few float32 ulps of values of order 1.
REF_TOL = 1e-6
BUILDERS = {"area": area_matrix, "bicubic": bicubic_matrix, "bilinear": bilinear_matrix}


def nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def test_fixture_interp_keys_are_the_tested_ones(official):
    keys = {k for k in official.files if k.startswith("interp/")}
    expected = {"interp/x16"} | {f"interp/area_16_to_{s}" for s in SIZES} | {f"interp/bicubic_{s}_to_16" for s in SIZES}
    assert keys == expected


@pytest.mark.parametrize("size", SIZES)
def test_area_matches_official(official, size):
    ours = nchw(resize(nhwc(official["interp/x16"]), size, "area"))
    ref = official[f"interp/area_16_to_{size}"]
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= REF_TOL


@pytest.mark.parametrize("size", SIZES)
def test_bicubic_matches_official(official, size):
    x = official["interp/x16"][:, :, :size, :size]
    ours = nchw(resize(nhwc(x), 16, "bicubic"))
    ref = official[f"interp/bicubic_{size}_to_16"]
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= REF_TOL


@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_matrix_rows_sum_to_one(mode):
    build = BUILDERS[mode]
    for n_in in range(1, 21):
        for n_out in range(1, 21):
            m = build(n_in, n_out)
            assert m.shape == (n_out, n_in) and m.dtype == np.float64
            # float64 sums of at most a few dozen terms: rounding stays far below 1e-12.
            np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-12, err_msg=f"{n_in} -> {n_out}")


def test_area_matrix_windows():
    # 5 -> 3: windows [0, 2), [1, 4), [3, 5) overlap (adaptive average pooling).
    expected = np.array([[1 / 2, 1 / 2, 0, 0, 0],
                         [0, 1 / 3, 1 / 3, 1 / 3, 0],
                         [0, 0, 0, 1 / 2, 1 / 2]])
    np.testing.assert_array_equal(area_matrix(5, 3), expected)


@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_same_size_is_identity(mode):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(resize(x, 6, mode)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(resize(x, (6, 6), mode)), np.asarray(x))
    # At integer source positions the interpolation weights are exactly one tap of 1 (float64).
    np.testing.assert_allclose(BUILDERS[mode](7, 7), np.eye(7), rtol=0, atol=1e-15)


@pytest.mark.parametrize("mode, in_hw, out_hw", [
    ("area", (7, 5), (3, 4)),
    ("area", (4, 6), (4, 3)),
    ("bicubic", (3, 4), (6, 9)),
    ("bicubic", (5, 2), (8, 2)),
    ("bilinear", (3, 5), (7, 4)),
])
def test_non_square_matches_per_axis_matrices(mode, in_hw, out_hw):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *in_hw, 3))
    ours = np.asarray(resize(jnp.asarray(x, jnp.float32), out_hw, mode))
    build = BUILDERS[mode]
    ref = np.einsum("oh,bhwc,pw->bopc", build(in_hw[0], out_hw[0]), x, build(in_hw[1], out_hw[1]))
    assert ours.shape == (2, *out_hw, 3)
    # float32 input and computation against a float64 reference on unit-scale data.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_int_size_means_square():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 9, 9, 2)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(resize(x, 4, "area")), np.asarray(resize(x, (4, 4), "area")))


def test_bad_mode_raises_naming_the_modes():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="area") as info:
        resize(x, 2, "nearest")
    assert "bicubic" in str(info.value) and "nearest" in str(info.value)
