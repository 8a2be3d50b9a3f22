"""The device mesh, the logical-axis rules and the shardings they give, global batches.

One program runs on every process (SPMD).  The mesh has three axes, outermost first:

* ``data``  — data parallel: the batch is split, parameters are replicated;
* ``fsdp``  — the batch is split *and* parameters are sharded on their ``embed`` axis (ZeRO-3 style);
* ``model`` — tensor parallel: ``heads``, ``mlp`` and ``vocab`` axes are split.

Everything comes from the config section ``mesh`` (defaults: :data:`var_jax.config.MESH`): the sizes
``data``, ``fsdp``, ``model`` (one of them may be -1 = the devices left over), ``dcn_data`` (how many
slices or hosts the ``data`` axis spans over the slow data-centre network; ``data`` stays outermost
so only the once-per-step gradient reduction crosses it), and ``rules``: which mesh axes each
logical axis name of the parameters and activations is split over (MaxText's
``logical_axis_rules``).  A parameter dimension that its mesh axes do not divide is an error naming
the parameter, unless ``mesh.replicate_indivisible`` says to keep it whole (logged).  Joining the
processes of a multi-host job is :mod:`var_jax.cluster`.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from var_jax.config import MESH, MESH_AXES
from var_jax.models.state import path_str

log = logging.getLogger(__name__)
SIZE_KEYS = (*MESH_AXES, "dcn_data")
Rules = Mapping[str, tuple[str, ...]]


# -- the mesh -------------------------------------------------------------------------------------
def mesh_section(config) -> dict[str, Any]:
    """The ``mesh`` section of ``config`` with defaults filled in (all devices on ``data`` when nothing
    is said), checked.  ``config`` is a run's config (its ``mesh`` section is read; none = the
    defaults), the section itself, or None."""
    config = dict(config or {})
    if "mesh" in config:
        section = dict(config["mesh"] or {})
    elif set(config) & set(MESH):
        section = config
    else:  # a run's config without a mesh section
        section = {}
    unknown = sorted(set(section) - set(MESH))
    if unknown:
        raise ValueError(f"unknown mesh key(s) {unknown}: the mesh section takes {sorted(MESH)}")
    out = {**MESH, **section}
    for k in SIZE_KEYS:
        v = out[k]
        whole = isinstance(v, (int, float)) and not isinstance(v, bool) and int(v) == v
        if not whole or (v < 1 and not (v == -1 and k in MESH_AXES)):
            raise ValueError(f"mesh.{k} must be a positive whole number" + (" or -1 (the rest)" if k in MESH_AXES
                             else "") + f", got {v!r}")
        out[k] = int(v)
    out["rules"] = _checked_rules(out["rules"])
    out["replicate_indivisible"] = bool(out["replicate_indivisible"])
    return out


def mesh_settings(config) -> dict[str, int]:
    """The mesh sizes of ``config`` (see :func:`mesh_section`)."""
    section = mesh_section(config)
    return {k: section[k] for k in SIZE_KEYS}


def _checked_rules(rules) -> dict[str, tuple[str, ...]]:
    """{logical name: mesh axes} with every value a tuple of mesh axis names."""
    out = {}
    for name, axes in dict(rules or {}).items():
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise ValueError(f"mesh.rules.{name} = {axes}: {bad} are not mesh axes; use some of {MESH_AXES} "
                             f"(or () for never split)")
        out[name] = axes
    return out


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
def logical_rules(config=None) -> dict[str, tuple[str, ...]]:
    """Which mesh axes each logical axis name is split over: ``mesh.rules`` of ``config`` (by
    default ``batch`` over (data, fsdp), ``embed`` over fsdp, ``heads``/``mlp``/``vocab`` over model,
    ``seq`` and ``layers`` never).  Mesh axes of size 1 are skipped where the rules are applied."""
    return mesh_section(config)["rules"]


def _rules_of(mesh: Mesh, rules: Rules | None) -> Rules:
    return logical_rules() if rules is None else rules


def partition_spec(names, shape, mesh: Mesh, rules: Rules, *, what: str | None = None) -> PartitionSpec:
    """The PartitionSpec of an array of ``shape`` whose axes carry logical ``names`` (None = never split).

    A mesh axis is used at most once per array.  A dimension that its mesh axes do not divide is an
    error when ``what`` names the array (a parameter: an FSDP or tensor-parallel layout that cannot
    be had must not turn silently into a replicated one); otherwise it is left whole.
    """
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"{len(names)} axis names {tuple(names)} for an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)} (add it to mesh.rules)")
        axes = rules.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        ways = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % ways:
            if what is not None:
                raise ValueError(
                    f"{what} has shape {tuple(shape)}: its {name!r} dimension ({dim}) cannot be split over mesh axis "
                    f"{'×'.join(axes)} of size {ways}. Choose mesh sizes that divide it, change mesh.rules.{name}, or "
                    f"set mesh.replicate_indivisible=True to keep such dimensions whole (replicated)")
            axes = ()
        if not axes:
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


def shardings(tree, mesh: Mesh, rules: Rules | None = None, *, replicate_indivisible: bool = False):
    """NamedShardings for every array of ``tree`` (an ``nnx.State``, a model's variables, an optimizer
    state built from them, or any pytree; abstract or concrete).

    Variables are mapped through their logical names (a dimension the rules cannot split is an
    error naming the variable, or, with ``replicate_indivisible``, kept whole and logged); anything
    else (scalars, step counters, plain arrays) is replicated.  Variables keep their place in the
    tree with the sharding as value, the form ``jax.jit(in_shardings=...)`` and ``jax.device_put``
    take for an ``nnx.State``.
    """
    rules = _rules_of(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(path, x):
        if isinstance(x, nnx.Variable):
            value = x.get_value() if hasattr(x, "get_value") else x.value
            name, names, shape = path_str(path), axis_names(x), np.shape(value)
            what = f"parameter {name}"
            if not replicate_indivisible:
                return x.replace(NamedSharding(mesh, partition_spec(names, shape, mesh, rules, what=what)))
            try:
                spec = partition_spec(names, shape, mesh, rules, what=what)
            except ValueError as e:
                log.warning("kept whole (mesh.replicate_indivisible): %s", e)
                spec = partition_spec(names, shape, mesh, rules)
            return x.replace(NamedSharding(mesh, spec))
        return replicated if hasattr(x, "shape") else None

    return jax.tree_util.tree_map_with_path(leaf, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


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
