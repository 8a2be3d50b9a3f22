"""Which library runs XLA's CPU convolutions and reductions.

jaxlib 0.10 hands matrix products, reductions and convolutions to YNNPACK by default.  Its products
are the fast ones (in bfloat16 twice Eigen's rate where the CPU has AVX-512 BF16), but its
convolutions are slower than XLA's own (Eigen's): VAR-d16's decoder shapes ran 1.1-1.2x faster in Eigen, in
float32 and bfloat16, and the d16 decode of one image took 2.28 s against 2.60 s in float32 and
2.49 s against 2.77 s in bfloat16 (both programs compiled and timed interleaved in one process on a
2-core AMD EPYC with AVX-512 BF16).  Its reductions are the faster: XLA's own split a long one into
windowed reductions of 32 elements, which took 13% of the op time in a profile of the bfloat16
training step (a bias's gradient, the sum of 1360 rows of 4096, about 20 ms a layer, where
YNNPACK's sum of such rows takes 1.6 ms alone).  The bfloat16 training step of VAR-d16 at
batch 2 took 8.2, 9.0, 9.0 and 8.9 s with YNNPACK's reductions against 9.7, 10.2, 9.4 and 9.2 s
without (in pairs of fresh processes), the float32 step 12.4 and 12.4 s against 12.0 and 12.8 s,
the sampler at batch 1 6.40 and 6.25 s against 6.54 and 6.23 s in float32, 4.56 and 4.33 s
against 4.35 and 4.33 s in bfloat16.  :func:`prefer_eigen_convolutions` keeps YNNPACK for the
products and the reductions.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backends, and every backend in the process (a
TPU's libtpu, a GPU plugin) parses it and stops the process at a flag it does not know.  So the flag
is added only for the jaxlib releases it was measured with, where the matching accelerator builds
know it too, and never over a setting the user made.  ``VAR_JAX_EIGEN_CONVOLUTIONS=0`` leaves XLA
as it is.
"""
from __future__ import annotations

import os
from importlib import metadata

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
PRODUCTS_AND_REDUCTIONS = f"{FLAG}=individual_dot,reduce"
SWITCH = "VAR_JAX_EIGEN_CONVOLUTIONS"
MEASURED_JAXLIB = ("0.10",)  # major.minor releases whose XLA knows the flag and was measured


def jaxlib_release() -> str | None:
    """The installed jaxlib's ``major.minor``, read without importing JAX (None if not installed)."""
    try:
        return ".".join(metadata.version("jaxlib").split(".")[:2])
    except metadata.PackageNotFoundError:
        return None


def wanted() -> bool:
    """Whether :func:`prefer_eigen_convolutions` would add the flag: a measured jaxlib, no setting of
    the flag in ``XLA_FLAGS`` already, and not switched off."""
    if os.environ.get(SWITCH, "1") == "0" or FLAG in os.environ.get("XLA_FLAGS", ""):
        return False
    return jaxlib_release() in MEASURED_JAXLIB


def prefer_eigen_convolutions() -> None:
    """When :func:`wanted`, add the flag that keeps YNNPACK for matrix products and reductions to ``XLA_FLAGS``.
    Call it first in a program's ``main``, before JAX has started (afterwards it has no effect)."""
    if wanted():
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {PRODUCTS_AND_REDUCTIONS}".strip()


def prepare_command() -> None:
    """What a command of this project (``var-jax``, the demo, the speed benchmarks) does first, before
    JAX starts: the flag above, then malloc on huge pages (:mod:`var_jax.host_memory`, which starts the
    command again with both in its environment)."""
    from var_jax import host_memory
    prefer_eigen_convolutions()
    host_memory.restart_with_huge_pages()
