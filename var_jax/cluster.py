"""Joining the other processes of a multi-host job: which cluster this process runs on (explicit
coordinator, SLURM, Cloud TPU VM, or none) and ``jax.distributed.initialize`` with what it needs.

Call :func:`initialize_distributed` before anything touches a device; on one host it does nothing.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping

import jax


def is_main_process() -> bool:
    """True on the process that writes logs, images and single-file outputs."""
    return jax.process_index() == 0


ENV_MODE = "VAR_JAX_DISTRIBUTED"  # auto (default) | off | env | slurm | tpu
MODES = ("auto", "off", "env", "slurm", "tpu")
GOOGLE_PCI_VENDOR = "0x1ae0"


def _tpu_chips(sys_root: str = "/") -> int:
    """Number of Google TPU chips on this host's PCI bus (what a Cloud TPU VM has and nothing else)."""
    devices = pathlib.Path(sys_root, "sys/bus/pci/devices")
    if not devices.is_dir():
        return 0
    return sum((d / "vendor").is_file() and (d / "vendor").read_text().strip() == GOOGLE_PCI_VENDOR
               for d in devices.iterdir())


def detect_cluster(environ: Mapping[str, str] | None = None, sys_root: str = "/") -> str:
    """How this process should join the others: 'env' (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` set explicitly), 'slurm' (inside ``srun`` with more
    than one task), 'tpu' (a Cloud TPU VM), or 'off' (one process: nothing to do).
    ``VAR_JAX_DISTRIBUTED`` forces one of these."""
    environ = os.environ if environ is None else environ
    mode = environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={environ[ENV_MODE]!r}; use one of {MODES}")
    if mode != "auto":
        return mode
    if "JAX_COORDINATOR_ADDRESS" in environ:
        return "env"
    slurm_tasks = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
    if "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ and int(slurm_tasks) > 1:
        return "slurm"
    if _tpu_chips(sys_root) > 0:
        return "tpu"
    return "off"


def _env_arguments(environ: Mapping[str, str]) -> dict[str, Any]:
    missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in environ]
    if missing:
        raise ValueError(f"an explicit coordinator needs JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES "
                         f"and JAX_PROCESS_ID; missing {missing}")
    address = environ["JAX_COORDINATOR_ADDRESS"]
    if ":" not in address:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS must be host:port, got {address!r}")
    try:
        n, pid = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
    except ValueError as e:
        raise ValueError(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be whole numbers: {e}") from None
    if not 0 <= pid < n:
        raise ValueError(f"JAX_PROCESS_ID must be in [0, JAX_NUM_PROCESSES={n}), got {pid}")
    return {"coordinator_address": address, "num_processes": n, "process_id": pid}


def _slurm_arguments(environ: Mapping[str, str]) -> dict[str, Any]:
    """The GPUs this SLURM task drives, when SLURM says which GPUs it can see (else JAX's default:
    one device per task, numbered by the task's local id).

    One task per node (8 GPUs visible) → all of them; 8 tasks per node each seeing all 8 → the
    local id's; GPUs bound per task (``--gpus-per-task``) → the ones bound.
    """
    if "JAX_LOCAL_DEVICE_IDS" in environ or not environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return {}
    visible = len([d for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    nodes = int(environ.get("SLURM_STEP_NUM_NODES", environ.get("SLURM_NNODES", "1")))
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1")))
    per_node = max(tasks // max(nodes, 1), 1)
    local = int(environ.get("SLURM_LOCALID", "0"))
    if visible == 1:  # SLURM bound one GPU to this task: it is device 0 here
        return {"local_device_ids": [0]}
    if visible % per_node:
        raise ValueError(f"{per_node} SLURM tasks per node cannot share the {visible} GPUs in CUDA_VISIBLE_DEVICES "
                         f"evenly; use one task per GPU or one per node")
    share = visible // per_node
    return {"local_device_ids": list(range(local * share, (local + 1) * share))}


def initialize_distributed(environ: Mapping[str, str] | None = None, *,
                           initialize: Callable[..., None] | None = None, sys_root: str = "/") -> str:
    """Join the other processes of this job (call before anything touches a device); returns the
    mode used (see :func:`detect_cluster`).  A no-op on one host and when already initialised.

    Cloud TPU and SLURM are read by JAX itself (``jax.distributed.initialize()`` with no
    arguments), except that under SLURM the GPUs of each task are given (see
    :func:`_slurm_arguments`); the explicit mode passes the environment's coordinator, process
    count and id.
    """
    environ = os.environ if environ is None else environ
    mode = detect_cluster(environ, sys_root)
    if mode == "off":
        return mode
    if initialize is None:
        if jax.distributed.is_initialized():
            return mode
        initialize = jax.distributed.initialize
    if mode == "env":
        initialize(**_env_arguments(environ))
    elif mode == "slurm":
        initialize(**_slurm_arguments(environ))
    else:
        initialize()
    return mode
