"""The persistent compilation cache the command line turns on."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from var_jax import compile_cache

_PROGRAM = ("from var_jax import compile_cache; import jax, jax.numpy as jnp; print(compile_cache.enable()); "
            "jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(3)))")


def _run(cache_dir: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["VAR_JAX_CACHE_DIR"] = cache_dir
    return subprocess.run([sys.executable, "-c", _PROGRAM], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_second_process_finds_the_program_in_the_cache(tmp_path):
    assert _run(str(tmp_path)) == str(tmp_path)
    first = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert first, "the first process wrote nothing to the cache"
    _run(str(tmp_path))  # a miss would compile again and write another entry
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == first


def test_off_switches_the_cache_off(tmp_path):
    assert _run("off") == "None"


def test_a_directory_that_cannot_be_made_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot create the compilation cache directory"):
        compile_cache.enable(blocker / "cache")
