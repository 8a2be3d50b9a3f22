"""Shared fixtures: the official reference tensors, tiny model configurations and small helpers.

Everything here is cheap to build; nothing allocates a released-size model.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import types

# The test models are tiny, so the suite's time goes into compiling.  Programs are cached on disk
# for the whole run (tests, and the command-line subprocesses they start, compile many identical
# programs) and XLA's LLVM backend skips its costly optimisations.  Both must be set before JAX starts.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# The tests run on CPU devices.  With libtpu installed (the tpu extra) JAX would otherwise look for a
# TPU first; compiling for a TPU topology (var_jax.tpu_slices) needs no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np
import pytest
from flax import nnx

from var_jax.models.state import assign_flat_state, flat_state
from var_jax.models.var import VARConfig
from var_jax.models.vqvae import VQVAEConfig

FIXTURE_PATH = pathlib.Path(__file__).resolve().parent / "fixtures" / "official_tiny.npz"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: one of the few tests that take more than ~10 s; still run by make test")


# -- the recorded official tensors ------------------------------------------------------------------
@pytest.fixture(scope="session")
def fixture_path() -> pathlib.Path:
    return FIXTURE_PATH


@pytest.fixture(scope="session")
def official(fixture_path):
    """The fixture as an open ``NpzFile`` (what ``var_jax.parity.run_checks`` takes)."""
    with np.load(fixture_path) as fx:
        yield fx


@pytest.fixture(scope="session")
def official_config(official) -> dict:
    return json.loads(str(official["config_json"]))


def _prefixed(fx, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: fx[k] for k in fx.files if k.startswith(prefix)}


@pytest.fixture
def official_vae_sd(official) -> dict[str, np.ndarray]:
    """The official VQVAE state dict (a fresh dict each test, so tests may edit it)."""
    return _prefixed(official, "vae/")


@pytest.fixture
def official_var_sd(official) -> dict[str, np.ndarray]:
    """The official VAR state dict (a fresh dict each test, so tests may edit it)."""
    return _prefixed(official, "var/")


@pytest.fixture(scope="session")
def official_configs(official_config) -> tuple[VQVAEConfig, VARConfig]:
    """Our configurations for the fixture, built here from its JSON (not through var_jax.parity)."""
    vae = VQVAEConfig(**official_config["vae"])
    var = VARConfig(**official_config["var"], patch_nums=vae.v_patch_nums, vocab_size=vae.vocab_size,
                    Cvae=vae.z_channels)
    return vae, var


# -- tiny configurations ------------------------------------------------------------------------------
def tiny_var_config(**overrides) -> VARConfig:
    """A VAR small enough to run eagerly in well under a second: L = 1 + 4 + 9 = 14 tokens."""
    base = dict(vocab_size=16, Cvae=8, num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3))
    return VARConfig(**{**base, **overrides})


def tiny_vae_config(**overrides) -> VQVAEConfig:
    """A VQVAE on 8×8 images with a 4×4 latent and three scales."""
    base = dict(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, v_patch_nums=(1, 2, 4))
    return VQVAEConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_var():
    return tiny_var_config


@pytest.fixture(scope="session")
def tiny_vae():
    return tiny_vae_config


# -- helpers ------------------------------------------------------------------------------------------
def randomize(model, seed: int = 0) -> None:
    """Give every floating-point variable of ``model`` (concrete or abstract) random values, in place.

    Fresh models have many all-zero / all-one tensors (biases, norm scales), which would hide a
    parameter that ends up in the wrong place; random values make every leaf unique.  Integer
    variables (counters) keep their value, or become zeros in an abstract model.
    """
    rng = np.random.default_rng(seed)
    new = {}
    for path, value in flat_state(model).items():
        if np.issubdtype(value.dtype, np.floating):
            new[path] = rng.normal(0.0, 0.5, value.shape).astype(value.dtype)
        elif isinstance(value, jax.ShapeDtypeStruct):
            new[path] = np.zeros(value.shape, value.dtype)
        else:
            new[path] = np.asarray(value)
    assign_flat_state(model, new)


def assert_same_params(a, b) -> None:
    """Both models have the same variables, each bit-for-bit equal."""
    fa, fb = flat_state(a), flat_state(b)
    assert sorted(map(str, fa)) == sorted(map(str, fb))
    for path in fa:
        va, vb = np.asarray(fa[path]), np.asarray(fb[path])
        assert va.shape == vb.shape and va.dtype == vb.dtype, path
        assert np.array_equal(va, vb), f"{path} differs"


def compiled_products(fn, *args) -> list[tuple[str, str, str]]:
    """(operand dtypes, lhs and rhs contracting dims) of every product in ``fn``'s program compiled
    for this machine: which layout and dtype XLA gives each matrix product."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    dtypes = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    dot = r" dot\((.*?)\),.*?lhs_contracting_dims=\{(\d)\}.*?rhs_contracting_dims=\{(\d)\}"
    return [("/".join(dtypes[n.strip().lstrip("%")] for n in operands.split(",")), lhs, rhs)
            for operands, lhs, rhs in re.findall(dot, hlo)]


def param_count(model) -> int:
    """Number of parameters (not statistics) of a concrete or abstract model."""
    return sum(int(np.prod(v.shape)) for v in flat_state(model, nnx.Param).values())


class SignalAfter:
    """A trainer's batch iterator that sends this process ``signum`` as it hands out batch ``n``: a
    scheduler's SIGTERM, or a Ctrl-C, arriving while the input pipeline reads step ``n``'s batch."""

    def __init__(self, batches, n: int, signum: int = signal.SIGTERM):
        self.batches, self.n, self.signum, self.fetched = batches, n, signum, 0

    def __next__(self):
        self.fetched += 1
        if self.fetched == self.n:
            os.kill(os.getpid(), self.signum)
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, for test modules (``helpers.randomize(model)``)."""
    return types.SimpleNamespace(randomize=randomize, assert_same_params=assert_same_params,
                                 param_count=param_count)
