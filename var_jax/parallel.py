"""Scale-out: multi-host start-up, the device mesh, logical-axis rules and shardings, global batches.

One program runs on every process (SPMD).  The mesh has three axes, outermost first:

* ``data``  — data parallel: the batch is split, parameters are replicated;
* ``fsdp``  — the batch is split *and* parameters are sharded on their ``embed`` axis (ZeRO-3 style);
* ``model`` — tensor parallel: ``heads``, ``mlp`` and ``vocab`` axes are split.

Their sizes come from the config section ``mesh`` (``data``, ``fsdp``, ``model``; one of them may
be -1 = the devices left over) plus ``dcn_data``: how many slices (TPU multi-slice) or hosts (GPU
nodes) the ``data`` axis spans over the slow data-centre network.  ``data`` stays outermost so the
only traffic crossing the slow network is the once-per-step gradient reduction.

Parameters carry logical axis names (``var_jax.models.layers.param``); :func:`logical_rules` maps
them to mesh axes and :func:`shardings` turns a tree of variables into ``NamedSharding``\\ s.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
LOGICAL_AXES = ("batch", "seq", "embed", "heads", "mlp", "vocab", "layers")
DEFAULT_MESH = {"data": -1, "fsdp": 1, "model": 1, "dcn_data": 1}

Rules = Mapping[str, tuple[str, ...] | str | None]


# -- the mesh -------------------------------------------------------------------------------------
def mesh_settings(config) -> dict[str, int]:
    """The mesh sizes of ``config`` with defaults filled in (all devices on ``data`` when nothing is
    said).  ``config`` is a run's config (its ``mesh`` section is read; none = the defaults), the
    section itself, or None."""
    config = dict(config or {})
    if "mesh" in config:
        section = dict(config["mesh"] or {})
    elif set(config) & set(DEFAULT_MESH):
        section = config
    else:  # a run's config without a mesh section
        section = {}
    unknown = sorted(set(section) - set(DEFAULT_MESH))
    if unknown:
        raise ValueError(f"unknown mesh key(s) {unknown}: the mesh section takes {sorted(DEFAULT_MESH)}")
    out = {**DEFAULT_MESH, **section}
    for k, v in out.items():
        whole = isinstance(v, (int, float)) and not isinstance(v, bool) and int(v) == v
        if not whole or (v < 1 and not (v == -1 and k in MESH_AXES)):
            raise ValueError(f"mesh.{k} must be a positive whole number" + (" or -1 (the rest)" if k in MESH_AXES
                             else "") + f", got {v!r}")
    return {k: int(v) for k, v in out.items()}


def parse_mesh(text: str) -> dict[str, int]:
    """A command line's mesh, 'data=2,fsdp=4,model=1' → {'data': 2, 'fsdp': 4, 'model': 1}; axes not
    named are 1, except that with none named at all ``data`` takes every device (-1)."""
    sizes = dict.fromkeys(MESH_AXES, 1)
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        value = value.strip()
        if name.strip() not in MESH_AXES or not (value.isdigit() and int(value) >= 1 or value == "-1"):
            raise ValueError(f"--mesh takes axis=size pairs with axes {MESH_AXES} and sizes >= 1 (or -1 for the "
                             f"rest), e.g. data=2,fsdp=4,model=1; got {item!r}")
        sizes[name.strip()] = int(value)
    if not text.strip():
        sizes["data"] = -1
    return sizes


def mesh_shape(config, num_devices: int | None = None) -> dict[str, int]:
    """{axis: size} for ``num_devices`` (default: all devices of all processes), -1 resolved."""
    settings = mesh_settings(config)
    n = jax.device_count() if num_devices is None else num_devices
    sizes = {a: settings[a] for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1 (the rest), got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n % fixed:
            raise ValueError(f"{n} devices cannot be split into mesh {sizes}: {n} is not a multiple of {fixed}")
        sizes[free[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise ValueError(f"mesh data×fsdp×model = {sizes['data']}×{sizes['fsdp']}×{sizes['model']} = "
                         f"{math.prod(sizes.values())} but there are {n} devices; make the product {n} or set "
                         f"one axis to -1")
    if sizes["data"] % settings["dcn_data"]:
        raise ValueError(f"mesh.dcn_data={settings['dcn_data']} must divide the data axis ({sizes['data']})")
    return sizes


def make_mesh(config=None, devices=None) -> Mesh:
    """The (data, fsdp, model) mesh of ``config`` over ``devices`` (default: all), Auto axis types.

    With ``dcn_data`` > 1 the data axis is built as dcn_data groups (TPU slices, or processes where
    devices have no slice index) × the rest inside each group, so only ``data`` crosses the slow
    network; otherwise the device order follows the fast interconnect's topology.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(config, len(devices))
    dcn = mesh_settings(config)["dcn_data"]
    shape = tuple(sizes[a] for a in MESH_AXES)
    types = (AxisType.Auto,) * len(MESH_AXES)
    if dcn == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    from jax.experimental import mesh_utils
    by_slice = hasattr(devices[0], "slice_index")
    groups = len({d.slice_index if by_slice else d.process_index for d in devices})
    if groups != dcn:
        raise ValueError(f"mesh.dcn_data={dcn} but the devices form {groups} "
                         f"{'slices' if by_slice else 'processes'}; set dcn_data to {groups} (or 1)")
    array = mesh_utils.create_hybrid_device_mesh((sizes["data"] // dcn, sizes["fsdp"], sizes["model"]),
                                                 (dcn, 1, 1), devices, process_is_granule=not by_slice)
    return Mesh(array, MESH_AXES, axis_types=types)


# -- logical axes → mesh axes ---------------------------------------------------------------------
def logical_rules(config=None) -> dict[str, tuple[str, ...] | str | None]:
    """Which mesh axes each logical axis name is split over.

    ``batch`` over (data, fsdp); ``embed`` over fsdp when fsdp > 1 (that is what makes it FSDP);
    ``heads``, ``mlp``, ``vocab`` over model; ``seq`` and ``layers`` never (the blocks are scanned
    over ``layers``, so each step needs whole layers).
    """
    settings = mesh_settings(config)
    return {"batch": ("data", "fsdp"), "seq": None, "embed": "fsdp" if settings["fsdp"] != 1 else None,
            "heads": "model", "mlp": "model", "vocab": "model", "layers": None}


def _axis_size(mesh: Mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def _rules_of(mesh: Mesh, rules: Rules | None) -> Rules:
    """``rules``, or by default the rules of the mesh's own sizes."""
    return logical_rules({"mesh": {a: int(mesh.shape[a]) for a in MESH_AXES if a in mesh.shape}}) \
        if rules is None else rules


def partition_spec(names, shape, mesh: Mesh, rules: Rules) -> PartitionSpec:
    """The PartitionSpec of an array of ``shape`` whose axes carry logical ``names`` (None = never split).

    A dimension that the mapped mesh axes do not divide evenly is left whole (replicated) rather
    than padded, and a mesh axis is used at most once per array.
    """
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"{len(names)} axis names {tuple(names)} for an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        axes = rules.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        if not axes or dim % _axis_size(mesh, axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def axis_names(variable: nnx.Variable):
    """The logical axis names a variable carries (None when it has none)."""
    meta = variable.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names:
            return tuple(names)
    return None


def shardings(tree, mesh: Mesh, rules: Rules | None = None):
    """NamedShardings for every array of ``tree`` (an ``nnx.State``, a model's variables, an optimizer
    state built from them, or any pytree; abstract or concrete).

    Variables are mapped through their logical names; anything else (scalars, step counters, plain
    arrays) is replicated.  Variables keep their place in the tree with the sharding as value, the
    form ``jax.jit(in_shardings=...)`` and ``jax.device_put`` take for an ``nnx.State``.
    """
    rules = _rules_of(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value() if hasattr(x, "get_value") else x.value
            spec = partition_spec(axis_names(x), np.shape(value), mesh, rules)
            return x.replace(NamedSharding(mesh, spec))
        return replicated if hasattr(x, "shape") else None

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def place(tree, sharding_tree):
    """``tree`` laid out by ``sharding_tree`` (same structure; e.g. from :func:`shardings`).

    Arrays go to their devices; abstract leaves (``jax.ShapeDtypeStruct``) get the sharding
    attached, so the same call prepares a program for running or only for compiling.  With several
    processes every process must pass the same values (each keeps only its devices' shards).
    """
    def put(x, s):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        if jax.process_count() == 1 or getattr(s, "is_fully_addressable", True):
            return jax.device_put(x, s)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    unbox = lambda x: x.get_value() if is_var(x) else x  # noqa: E731
    return jax.tree.map(lambda x, s: x.replace(put(unbox(x), unbox(s))) if is_var(x) else put(x, unbox(s)),
                        tree, sharding_tree, is_leaf=is_var)


class Layout(NamedTuple):
    """A mesh with its rules in hashable form, so a compiled program can take it as a static
    argument and lay out the arrays it creates itself (caches, buffers)."""
    mesh: Mesh
    rules: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, mesh: Mesh, rules: Rules | None = None) -> "Layout":
        return cls(mesh, tuple(sorted(_rules_of(mesh, rules).items())))

    def sharding(self, names, shape) -> NamedSharding:
        return NamedSharding(self.mesh, partition_spec(names, shape, self.mesh, dict(self.rules)))

    def constrain(self, x: jax.Array, names) -> jax.Array:
        """``x`` (traced) split by its logical axis ``names``."""
        return jax.lax.with_sharding_constraint(x, self.sharding(names, x.shape))


def batch_sharding(mesh: Mesh, rules: Rules | None = None, ndim: int = 1) -> NamedSharding:
    """Leading axis split over the ``batch`` rule's mesh axes, the other ``ndim - 1`` axes whole."""
    axes = _rules_of(mesh, rules)["batch"]
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if mesh.shape[a] > 1)
    return NamedSharding(mesh, PartitionSpec(axes or None, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules: Rules | None = None) -> int:
    """Into how many slices the batch is split: batches must be multiples of it."""
    spec = batch_sharding(mesh, rules).spec[0]
    return math.prod(mesh.shape[a] for a in ((spec,) if isinstance(spec, str) else spec or ()))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# -- data -----------------------------------------------------------------------------------------
def process_batch_shard(mesh: Mesh, rules: Rules | None = None) -> tuple[int, int]:
    """(which, of how many) equal, contiguous slices of the global batch this process's devices hold:
    what its input pipeline should read.

    Usually (process_index, process_count); processes share a slice when a model-parallel group
    spans them (they must then read the same examples).
    """
    sharding = batch_sharding(mesh, rules)
    index_map = sharding.devices_indices_map((sharding.num_devices,))  # one row per device at most
    every = sorted({idx[0].start or 0 for idx in index_map.values()})

    def held(process: int) -> tuple[int, ...]:
        return tuple(sorted({index_map[d][0].start or 0 for d in mesh.devices.flat if d.process_index == process}))

    groups = sorted({held(p) for p in {d.process_index for d in mesh.devices.flat}})
    size = len(groups[0])
    if any(g != tuple(every[k * size:(k + 1) * size]) for k, g in enumerate(groups)):
        raise ValueError("this mesh gives processes batch slices that are not contiguous and equal; keep the batch "
                         "axes (data, fsdp) outermost")
    return groups.index(held(jax.process_index())), len(groups)


def global_batch(local_batch, mesh: Mesh, rules: Rules | None = None):
    """This process's share of a batch (a dict or pytree of NumPy arrays with the per-process batch
    first) → global ``jax.Array``\\ s split over the batch axes of ``mesh``."""
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, rules, x.ndim), x)
    return jax.tree.map(put, local_batch)


# -- processes ------------------------------------------------------------------------------------
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
