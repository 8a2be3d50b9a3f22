"""Model state as flat dicts of arrays keyed by path tuples: the form checkpoints and the converter use."""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx, traverse_util


def abstract_model(cls, cfg):
    """A model whose variables are shapes only: nothing is allocated."""
    return nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))


def flat_state(model, kind=nnx.Variable) -> dict[tuple, jax.Array | jax.ShapeDtypeStruct]:
    """{path: value} of every variable of ``kind`` (parameters and statistics by default)."""
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, kind)))


def assign_flat_state(model, flat: Mapping[tuple, np.ndarray | jax.Array]) -> None:
    """Set every variable of ``model`` (abstract or concrete) from ``flat``, which must cover them all."""
    state = nnx.state(model)
    current = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    missing = sorted(path_str(p) for p in current if p not in flat)
    if missing:
        raise KeyError(f"no value for {len(missing)} variable(s): {missing[:10]}")
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict({p: flat[p] for p in current}))
    nnx.update(model, state)


def path_str(path) -> str:
    """'blocks/attn/mat_qkv': how checkpoints, errors and logs name a variable, from a tuple of names
    or a JAX key path."""
    return "/".join(str(next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)), k)) for k in path)


def init_model(cls, cfg, seed: int = 0):
    """A freshly initialised model, built by one compiled program (eager construction compiles every
    initialiser separately, which dominates start-up on CPU)."""
    graphdef, _ = nnx.split(abstract_model(cls, cfg))
    build = jax.jit(lambda: nnx.state(cls(cfg, rngs=nnx.Rngs(seed))))
    # The program runs once: on CPU, LLVM's optimisations of its many random-number kernels take
    # several times longer than running them unoptimised.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    state = build.lower().compile(options)()
    return nnx.merge(graphdef, state)
