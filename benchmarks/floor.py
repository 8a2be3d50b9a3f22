"""The machine's floor: its own rate on one large square matrix product, per dtype.

Every benchmark measures it in the same run as its timings and prints the fraction of it reached, so
the numbers can be read on any machine (and under a varying load, which shifts both alike only in part).
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (its result waited for) over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflop_per_s(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an (n, n) @ (n, n) product in ``dtype``, accumulated in float32 (as the models do)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    return 2 * n ** 3 / median_time(lambda: f(a), repeats) / 1e9


def floors() -> dict[str, float]:
    """{"float32": GFLOP/s, "bfloat16": GFLOP/s} on the default device."""
    return {dtype: round(matmul_gflop_per_s(dtype), 1) for dtype in ("float32", "bfloat16")}
