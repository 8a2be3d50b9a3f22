"""TPU slices as the TPU compiler sees them, on any machine: topology names, compile-only devices
and what one chip of each generation holds and computes.

libtpu (the ``tpu`` extra) compiles for a topology without a TPU attached
(``jax.experimental.topologies``); the devices it gives can be put in a mesh and programs compiled
for them, nothing can run on them.  Names are the ``jax.experimental.topologies`` spelling,
``GENERATION:SHAPE`` (``v5e:4x4``, ``v5p:4x4x4``), or the name of the slice as rented
(``v5litepod-32``, ``v5p-128``: v5e and v6e count chips, v4 and v5p count TensorCores, two a chip).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    dims: int              # 2: a 2-D torus of chips (v5e, v6e); 3: a 3-D one (v4, v5p)
    hbm_bytes: int         # what the compiler may allocate on one chip (libtpu 0.0.42's figure)
    peak_flops: float      # dense bf16 FLOP/s of one chip
    cores_per_chip: int    # TensorCores counted by the rental name (v4-8 = 4 chips)
    rented_as: str         # the rental name's prefix (v5litepod-16)

    def rented_name(self, chips: int) -> str:
        return f"{self.rented_as}-{chips * self.cores_per_chip}"


# HBM as the TPU compiler reports it when a program does not fit ("... of 15.75G hbm"); peak bf16
# FLOP/s from Cloud TPU's published chip specifications.
CHIPS = {
    "v4": Chip("v4", 3, int(30.75 * GiB), 275e12, 2, "v4"),
    "v5e": Chip("v5e", 2, int(15.75 * GiB), 197e12, 1, "v5litepod"),
    "v5p": Chip("v5p", 3, int(95.74 * GiB), 459e12, 2, "v5p"),
    "v6e": Chip("v6e", 2, int(31.25 * GiB), 918e12, 1, "v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
EXAMPLES = "v5e:4x4, v5litepod:4x8, v5p:2x2x4, v4:2x2x2, v6e:8x8, or a rented slice: v5litepod-32, v5p-128, v4-32"


@dataclasses.dataclass
class Slice:
    name: str           # the topologies spelling, e.g. v5e:4x8
    chip: Chip
    devices: list       # compile-only devices, one per chip
    device_kind: str

    @property
    def chips(self) -> int:
        return len(self.devices)


def _default_shape(chips: int, dims: int) -> str:
    """The shape Cloud TPU gives a slice of ``chips`` chips (powers of two, most even first; the
    3-D ones grow along z, then y, then x: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8 ...)."""
    e = int(math.log2(chips))
    if dims == 2:
        return f"{2 ** (e // 2)}x{2 ** (e - e // 2)}"
    if chips < 8:
        return {1: "1x1x1", 2: "1x2x1", 4: "2x2x1"}[chips]
    x, y = e // 3, (e + 1) // 3
    return f"{2 ** x}x{2 ** y}x{2 ** (e - x - y)}"


def canonical_name(name: str) -> tuple[str, Chip]:
    """``v5litepod-32`` / ``v5e:4x8`` → (``v5e:4x8``, its chip), or a ValueError listing valid names."""
    text = name.strip().lower()
    rented = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    spelled = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text)
    match = rented or spelled
    generation = ALIASES.get(match.group(1), match.group(1)) if match else None
    if generation not in CHIPS:
        raise ValueError(f"unknown TPU topology {name!r}: give GENERATION:SHAPE or a rented slice name with "
                         f"generation one of {sorted(CHIPS)} (or {sorted(ALIASES)}), e.g. {EXAMPLES}")
    chip = CHIPS[generation]
    if rented:
        count = int(rented.group(2))
        chips = count // chip.cores_per_chip
        if count % chip.cores_per_chip or chips < 1 or chips & (chips - 1):
            raise ValueError(f"{name!r}: a {generation} slice has a power-of-two number of chips "
                             f"({chip.cores_per_chip} per unit of the name), e.g. {generation}-"
                             f"{8 * chip.cores_per_chip}")
        return f"{generation}:{_default_shape(chips, chip.dims)}", chip
    shape = spelled.group(2)
    if shape.count("x") + 1 != chip.dims:
        raise ValueError(f"{name!r}: {generation} slices have {chip.dims}-D shapes, e.g. "
                         f"{generation}:{_default_shape(16, chip.dims)}")
    return f"{generation}:{shape}", chip


def compile_only_slice(name: str) -> Slice:
    """The devices of TPU topology ``name`` for compiling (needs libtpu: ``pip install 'var-jax[tpu]'``)."""
    topology_name, chip = canonical_name(name)
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise ImportError("compiling for a TPU topology needs libtpu: pip install 'var-jax[tpu]'") from e
    from jax.experimental import topologies
    # libtpu starts by looking for the TPU it runs on (and warns at length when there is none); the
    # slice compiled for is the one to describe (the topology itself is given explicitly below).
    # Compiling drives no TPU, so several planners (parallel tests) may load libtpu at once.
    chips = math.prod(int(n) for n in topology_name.split(":")[1].split("x"))
    hint = {"TPU_ACCELERATOR_TYPE": chip.rented_name(chips), "TPU_WORKER_HOSTNAMES": "localhost",
            "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    saved = {k: os.environ.get(k) for k in hint}
    os.environ.update({k: v for k, v in hint.items() if saved[k] is None})
    # One chip a device: v4 and v5p join a chip's two TensorCores (megacore), as their slices run.
    kwargs = {"chip_config_name": "megacore"} if chip.cores_per_chip == 2 else {}
    try:
        desc = topologies.get_topology_desc(topology_name=topology_name, platform="tpu", **kwargs)
    except Exception as e:  # libtpu's own error, e.g. a shape its generation does not have
        raise ValueError(f"the TPU compiler rejects topology {topology_name!r} ({e}); e.g. {EXAMPLES}") from e
    finally:  # what this process starts later (JAX on a real TPU, subprocesses) must not see the hint
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
    devices = list(desc.devices)
    return Slice(topology_name, chip, devices, devices[0].device_kind)
