"""Which library runs XLA's CPU convolutions.

jaxlib 0.10 hands both matrix products and convolutions to YNNPACK by default.  Its products are
the fast ones (in bfloat16 twice Eigen's rate where the CPU has AVX-512 BF16), but its convolutions
are slower than XLA's own (Eigen's): VAR-d16's decoder shapes ran 1.1-1.2x faster in Eigen, in
float32 and bfloat16, and the d16 decode of one image took 2.28 s against 2.60 s in float32 and
2.49 s against 2.77 s in bfloat16 (both programs compiled and timed interleaved in one process on a
2-core AMD EPYC with AVX-512 BF16).  :func:`prefer_eigen_convolutions` keeps YNNPACK for the
products only.

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
PRODUCTS_ONLY = f"{FLAG}=individual_dot"
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
    """When :func:`wanted`, add the flag that keeps YNNPACK for matrix products only to ``XLA_FLAGS``.
    Call it first in a program's ``main``, before JAX has started (afterwards it has no effect)."""
    if wanted():
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {PRODUCTS_ONLY}".strip()


def prepare_command() -> None:
    """What a command of this project (``var-jax``, the demo, the speed benchmarks) does first, before
    JAX starts: the flag above, then malloc on huge pages (:mod:`var_jax.host_memory`, which starts the
    command again with both in its environment)."""
    from var_jax import host_memory
    prefer_eigen_convolutions()
    host_memory.restart_with_huge_pages()
