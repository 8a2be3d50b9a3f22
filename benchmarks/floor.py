"""The machine's floor: its own best rate on one large square matrix product, per dtype (and the
rate at which it reads memory).

Every benchmark measures it in the same run as its timings and prints the fraction of it reached, so
the numbers can be read on any machine.  The floor is the best of several products, not their median:
a shared virtual machine has spells of half speed lasting seconds, and a median of a few products
lands in them at random (on a 2-core VM, in one test: medians of 5 moved 80–147 GFLOP/s in float32
while the best of 10 stayed at 147–154; between processes the best still moved 128–180).  Also
here: the timing and FLOP-counting helpers the benchmarks share.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (its result waited for) over ``repeats`` calls."""
    return statistics.median(call_times(fn, repeats))


def call_times(fn, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn()``, each waited for."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def xla_flops(jitted, *args) -> float:
    """The model's FLOPs in ``jitted(*args)``, as XLA counts them before fusion in the program lowered
    for a TPU, whose convolutions stay convolutions: lowered for a CPU they take forms that multiply
    less for the same result (``var_jax/ops/conv.py``), which would count less than the model's work.
    The count runs on the CPU client: a GPU lowering has no cost analysis (None), and a compiled GPU
    program does not count its library calls."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), args)
    return jitted.trace(*shapes).lower(lowering_platforms=("tpu",)).cost_analysis()["flops"]


def default_size() -> int:
    """2048 on a CPU; 8192 on an accelerator, where a 2048² product is too small to keep it busy."""
    return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_gflop_per_s(dtype: str, n: int | None = None, repeats: int = 10) -> float:
    """Best GFLOP/s of an (n, n) @ (n, n) product in ``dtype``, accumulated in float32 (as the models
    do), over ``repeats`` products."""
    n = n or default_size()
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    return 2 * n ** 3 / min(call_times(lambda: f(a), repeats)) / 1e9


def read_gb_per_s(n_bytes: int = 2 ** 29, repeats: int = 10) -> float:
    """Best GB/s of reading one float32 array of ``n_bytes`` (a sum over it), over ``repeats`` reads:
    the rate that bounds a step which reads every weight for a few tokens (the first scales)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    jax.block_until_ready(f(x))
    return n_bytes / min(call_times(lambda: f(x), repeats)) / 1e9


def floors() -> dict[str, float]:
    """{"float32": GFLOP/s, "bfloat16": GFLOP/s} on the default device."""
    return {dtype: round(matmul_gflop_per_s(dtype), 1) for dtype in ("float32", "bfloat16")}
