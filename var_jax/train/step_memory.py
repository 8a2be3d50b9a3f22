"""Does the VAR train step fit a device's memory: its per-device bytes from the compiled program, and
the rematerialisation policy that fits.

``var.remat=auto`` is resolved here, by :func:`choose_remat`, both by the trainer at start-up (on
its own devices) and by ``var-jax plan --remat auto`` (the TPU compiler for a topology, no TPU
attached), so a pod job and its plan never disagree.  The policies are tried from the least
recomputation to the most and the first whose compiled step fits is kept.  A program that does
not fit is an answer, not an error: the TPU compiler refuses it (its message gives the bytes it
needed), other compilers' programs are compared with the device's memory.  CPU devices report no
memory of their own: there the host's memory, shared by this process's devices, is the budget, and
the policies start from ``dots_saveable``, in a 16-bit compute dtype from
``dots_with_no_batch_dims_saveable`` (see :data:`CPU_REMAT_ORDER`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import time
from typing import Callable

import jax
import numpy as np

# Least recomputation first: keep every activation; keep the output of every matmul (attention
# scores and weights included) and recompute the elementwise work; keep only the weight matmuls
# (recompute attention too); keep only each block's input (recompute the whole block).
REMAT_ORDER = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")
# On a CPU the step is slower without rematerialisation, not only larger: the scan over the layers
# writes every layer's residuals into stacks (the attention weights among them) and, in bfloat16,
# converts the stacks to float32 as a whole.  VAR-d16 at batch 2 on a 2-core CPU: 18.4-19.9 s a
# step without, 13.0-14.9 s with dots_saveable (float32 and bfloat16, interleaved in one process).
# In a 16-bit compute dtype, recomputing the attention is faster still than keeping its scores
# (float32 stacks): VAR-d16 in bfloat16, both policies interleaved in one process, a step with
# dots_with_no_batch_dims_saveable took 0.95-0.96 of the time of one with dots_saveable at batch 2
# (medians of 5 or 6 calls each, three runs; 1.00 in a fourth that held four programs at once) and
# 0.92 at batch 8; in float32 0.99 and 1.02.
CPU_REMAT_ORDER = {"float32": REMAT_ORDER[1:], "16-bit": REMAT_ORDER[2:]}


def cpu_remat_order(config) -> tuple[str, ...]:
    """The policies ``auto`` tries on a CPU for ``config``'s compute dtype (the default recipe's when
    the config names none)."""
    from var_jax.config import with_training_defaults
    dtype = with_training_defaults(config).train.compute_dtype
    return CPU_REMAT_ORDER["16-bit" if np.dtype(dtype).itemsize == 2 else "float32"]


# The TPU compiler refusing a program: "Ran out of memory on HBM, the total memory required for HLO
# temporaries (38.60G) exceeds available HBM (15.75G)."
_OOM = re.compile(r"required for ([\w ]+?) \(([\d.]+)([KMGT]?)B?\) exceeds available HBM \(([\d.]+)([KMGT]?)B?\)",
                  re.IGNORECASE)
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def per_device_bytes(abstract_tree, sharding_tree) -> int:
    """Bytes one device holds of a tree of abstract arrays under the given shardings (same tree
    structure; every shard is the same size, as var_jax.parallel never splits unevenly)."""
    from flax import nnx

    def unbox(x):
        return x.get_value() if isinstance(x, nnx.Variable) else x

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    leaves = [unbox(x) for x in jax.tree.leaves(abstract_tree, is_leaf=is_var)]
    shardings = [unbox(s) for s in jax.tree.leaves(sharding_tree, is_leaf=is_var)]
    if len(leaves) != len(shardings):
        raise ValueError(f"{len(leaves)} arrays but {len(shardings)} shardings")
    return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shardings))


def compiled_memory(compiled) -> dict[str, int]:
    """Per-device bytes XLA assigned to a compiled program's arguments, outputs and temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("this JAX backend reports no memory analysis for compiled programs")
    return with_peak({"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
                      "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes})


def with_peak(sizes: dict[str, int]) -> dict[str, int]:
    """``sizes`` (arguments, outputs, aliased, temporaries) with the peak they add up to: donated
    inputs are reused for outputs (aliased), so they count once."""
    return {**sizes, "peak": sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]}


def out_of_memory(error: Exception) -> tuple[str, int, int] | None:
    """(what, bytes needed, bytes available) per device when ``error`` is the compiler refusing a
    program that does not fit its memory (what: e.g. "HLO temporaries"); None for any other error."""
    m = _OOM.search(str(error))
    if m is None:
        return None
    size = lambda number, unit: int(float(number) * _UNIT[unit.upper()])  # noqa: E731
    return m.group(1), size(m.group(2), m.group(3)), size(m.group(4), m.group(5))


@dataclasses.dataclass
class StepFit:
    """One compile of the train step: its memory per device, or what a refusing compiler needed."""
    remat: str
    fits: bool
    compile_s: float
    memory: dict[str, int] | None = None  # compiled_memory() plus params / optimizer_state bytes
    refused: tuple[str, int, int] | None = None  # out_of_memory() of the compiler's refusal

    def describe(self) -> str:
        if self.memory is not None:
            return f"{self.remat}: {self.memory['peak'] / 2**30:.2f} GiB"
        what, needed, available = self.refused
        return f"{self.remat}: {what} {needed / 2**30:.2f} GiB > {available / 2**30:.2f} GiB"


def with_remat(config, remat: str):
    """A copy of ``config`` with ``var.remat`` set."""
    config = copy.deepcopy(config)
    config.var.remat = remat
    return config


def train_step_fit(config, mesh, batch: int, budget_bytes: int | None, *, images: bool = False) -> StepFit:
    """Compile the trainer's step for ``batch`` on ``mesh`` (abstract inputs) and say whether it fits
    ``budget_bytes`` per device (None: no limit known, only the compiler's own verdict counts)."""
    from var_jax.train.var_trainer import lower_train_step
    start = time.perf_counter()
    lowered = lower_train_step(config, mesh, batch, images=images)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        oom = out_of_memory(e)
        if oom is None:
            raise
        return StepFit(config.var.remat, False, time.perf_counter() - start, refused=oom)
    seconds = time.perf_counter() - start
    memory = compiled_memory(compiled)
    state, shardings = lowered.args_info[0][0], compiled.input_shardings[0][0]
    memory["params"] = per_device_bytes(state["params"], shardings["params"])
    memory["optimizer_state"] = per_device_bytes(state["opt"], shardings["opt"])
    fits = budget_bytes is None or memory["peak"] <= budget_bytes
    return StepFit(config.var.remat, fits, seconds, memory=memory)


def choose_remat(config, mesh, batch: int, budget_bytes: int | None, *, images: bool = False,
                 policies: tuple[str, ...] = REMAT_ORDER,
                 report: Callable[[StepFit], None] = lambda fit: None) -> tuple[StepFit | None, list[StepFit]]:
    """The first of ``policies`` (least recomputation first) whose train step fits, and every
    attempt in order (``report`` is called after each); (None, attempts) when none fits."""
    tried = []
    for policy in policies:
        fit = train_step_fit(with_remat(config, policy), mesh, batch, budget_bytes, images=images)
        tried.append(fit)
        report(fit)
        if fit.fits:
            return fit, tried
    return None, tried


def device_memory_limit(device) -> int | None:
    """Bytes a process may allocate on ``device``, as its runtime reports (TPU, GPU); None where it
    reports none (CPU)."""
    try:
        stats = device.memory_stats()
    except (RuntimeError, jax.errors.JaxRuntimeError):
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def host_memory_bytes() -> int:
    """The machine's physical memory, which its CPU devices share."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_auto_remat(config, images: bool | None = None):
    """A run's ``config`` with ``var.remat=auto`` replaced by the policy :func:`choose_remat` picks
    for its train step on its mesh (``config`` itself for any other setting).  On CPU devices, which
    report no memory limit, the budget is the host's memory over this process's devices and the
    policies are :func:`cpu_remat_order`'s.  ``images``: whether the step tokenizes images (default:
    when the config names no token maps)."""
    if config.get("var", {}).get("remat") != "auto":
        return config
    from var_jax import parallel
    mesh = parallel.make_mesh(config)
    if images is None:
        images = not config.get("data", {}).get("tokens", "")
    # A device of this process (all are of one kind): another process's devices report nothing here,
    # and every process must come to the same answer.
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    budget, policies = device_memory_limit(local[0]), REMAT_ORDER
    if budget is None and local[0].platform == "cpu":
        budget, policies = host_memory_bytes() // len(local), cpu_remat_order(config)
    elif budget is None:
        print("var.remat=auto: these devices report no memory limit; training without rematerialisation")
        return with_remat(config, "none")
    batch = int(config.train.batch_size)
    fit, tried = choose_remat(config, mesh, batch, budget, images=images, policies=policies)
    needs = "; ".join(f.describe() for f in tried)
    if fit is None:
        raise ValueError(f"var.remat=auto: no rematerialisation policy fits a batch of {batch} in "
                         f"{budget / 2**30:.2f} GiB per device ({needs}); use more devices, a larger fsdp "
                         f"axis or a smaller train.batch_size")
    print(f"var.remat=auto: {fit.remat} ({needs} per device of {budget / 2**30:.2f} GiB)")
    return with_remat(config, fit.remat)
