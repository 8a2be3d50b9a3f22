"""Memory planner: per-device bytes of a model's training and sampling on a given mesh, read off the
compiled programs, before renting the machines.

    var-jax plan --config configs/var_d30.py --mesh data=4,fsdp=8,model=1 --batch 1024

The programs are compiled for fake CPU devices, one per mesh position (nothing is allocated: the
inputs are abstract): the train step is the trainer's own (``var_jax.train.var_trainer.
lower_train_step``), the sampler is ``var_jax.sample.Sampler`` on the mesh.  Parameters and
optimizer state are counted from the shardings the step takes them in; the temporaries
(activations, gradients, the KV cache, XLA's scratch) come from XLA's buffer assignment of the
compiled program.  The CPU compiler fuses and lays out differently from the
GPU and TPU compilers, so temporaries are an estimate of theirs (same program, same shardings).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

MB = 1 << 20
# The function the VAR trainer provides: lower_train_step(config, mesh, batch_size) -> jax.stages.Lowered,
# the real train step for a global batch, lowered for ``mesh`` from abstract inputs.


def _use_fake_devices(count: int) -> None:
    """Make the CPU backend show ``count`` devices, or say why it cannot (the backend already started)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        # Memory figures come from buffer assignment, which LLVM's optimisation level does not change.
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={count} "
                                   f"--xla_backend_optimization_level=0").strip()
    import jax
    jax.config.update("jax_platforms", "cpu")
    if jax.device_count() < count:
        raise ValueError(f"the mesh needs {count} devices but JAX started with {jax.device_count()}; run "
                         f"`var-jax plan` (or python -m var_jax.plan) in a fresh process")


def per_device_bytes(abstract_tree, sharding_tree) -> int:
    """Bytes one device holds of a tree of abstract arrays under the given shardings (same tree
    structure; every shard is the same size, as var_jax.parallel never splits unevenly)."""
    import jax
    import numpy as np
    from flax import nnx

    def unbox(x):
        return x.get_value() if isinstance(x, nnx.Variable) else x

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    leaves = [unbox(x) for x in jax.tree.leaves(abstract_tree, is_leaf=is_var)]
    shardings = [unbox(s) for s in jax.tree.leaves(sharding_tree, is_leaf=is_var)]
    if len(leaves) != len(shardings):
        raise ValueError(f"{len(leaves)} arrays but {len(shardings)} shardings")
    return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shardings))


def param_bytes(var_cfg, mesh, rules) -> dict[str, int]:
    """Per-device bytes of the VAR parameters (float32) under the mesh's shardings, and their count."""
    import jax
    from flax import nnx

    from var_jax import parallel
    from var_jax.models.state import abstract_model
    from var_jax.models.var import VAR

    _, params = nnx.split(abstract_model(VAR, var_cfg), nnx.Param)
    return {"params": per_device_bytes(params, parallel.shardings(params, mesh, rules)),
            "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(params))}


def compiled_memory(compiled) -> dict[str, int]:
    """Per-device bytes XLA assigned to a compiled program's arguments, outputs and temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("this JAX backend reports no memory analysis for compiled programs")
    out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
           "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes}
    # Donated inputs are reused for outputs (aliased), so they count once.
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    return out


def sampler_memory(vae_cfg, var_cfg, mesh, rules, batch: int, settings=None) -> dict[str, int]:
    """The compiled sampler (uint8 images) for ``batch`` images on ``mesh`` with ``settings``
    (default: those of ``var-jax sample``)."""
    from var_jax.models.state import abstract_model
    from var_jax.models.var import VAR
    from var_jax.models.vqvae import VQVAE
    from var_jax.sample import OFFICIAL_SETTINGS, Sampler

    settings = OFFICIAL_SETTINGS if settings is None else settings
    sampler = Sampler(abstract_model(VQVAE, vae_cfg), abstract_model(VAR, var_cfg), settings, mesh=mesh,
                      rules=rules)
    return compiled_memory(sampler.lower(batch).compile())


def train_step_memory(config, mesh, batch: int) -> dict[str, int] | str:
    """The compiled train step's memory, with the parameter and optimizer-state bytes of the
    training state it takes (its first argument), or why it cannot be planned."""
    from var_jax.train.var_trainer import lower_train_step
    lowered = lower_train_step(config, mesh, batch)
    compiled = lowered.compile()
    out = compiled_memory(compiled)
    state, shardings = lowered.args_info[0][0], compiled.input_shardings[0][0]
    for part, key in (("params", "params"), ("optimizer_state", "opt")):
        if key in state:
            out[part] = per_device_bytes(state[key], shardings[key])
    return out


def plan(config, mesh_sizes: dict[str, int], batch: int, sample_batch: int | None = None,
         train: bool = True, sampling=None) -> dict[str, Any]:
    """The memory report of ``config`` on a mesh of ``mesh_sizes`` (needs that many devices);
    ``sampling``: the sampler's SamplingSettings (default: those of ``var-jax sample``)."""
    import jax

    from var_jax import parallel
    from var_jax.config import model_configs

    vae_cfg, var_cfg = model_configs(config)
    if var_cfg is None:
        raise ValueError("the config has no 'var' section: the planner sizes VAR training and sampling")
    mesh_cfg = {"mesh": dict(mesh_sizes)}
    n = math.prod(mesh_sizes.values())
    mesh = parallel.make_mesh(mesh_cfg, jax.devices()[:n])
    rules = parallel.logical_rules(mesh_cfg)
    batch_shards = parallel.batch_shards(mesh, rules)
    for what, b in (("--batch", batch), ("--sample-batch", sample_batch)):
        if b is not None and (b < 1 or b % batch_shards):
            raise ValueError(f"{what} {b} must be a positive multiple of data×fsdp = {batch_shards}")
    report: dict[str, Any] = {"mesh": dict(mesh.shape), "devices": n, "batch": batch,
                              "var": {"depth": var_cfg.depth, "embed_dim": var_cfg.embed_dim, "dtype": var_cfg.dtype,
                                      "remat": var_cfg.remat}}
    report.update(param_bytes(var_cfg, mesh, rules))
    if train:
        report["train_step"] = step = train_step_memory(config, mesh, batch)
        if isinstance(step, dict) and "optimizer_state" in step:
            report["optimizer_state"] = step["optimizer_state"]
    if sample_batch and vae_cfg is not None:
        report["sample_batch"] = sample_batch
        report["sampler"] = sampler_memory(vae_cfg, var_cfg, mesh, rules, sample_batch, sampling)
    return report


def format_report(r: dict[str, Any]) -> str:
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
    v = r["var"]
    lines = [f"VAR d{v['depth']} (width {v['embed_dim']}, {r['param_count'] / 1e6:.1f}M parameters, remat "
             f"{v['remat']}) on {r['devices']} devices, mesh {mesh}; per device:",
             f"  parameters (float32)         {r['params'] / MB:10.1f} MiB"]
    if "optimizer_state" in r:
        lines.append(f"  optimizer state (AdamW)      {r['optimizer_state'] / MB:10.1f} MiB")
    for key, title in (("train_step", f"train step, global batch {r['batch']}"),
                       ("sampler", f"sampler, batch {r.get('sample_batch')}, compute {v['dtype']}")):
        if key not in r:
            continue
        m = r[key]
        if isinstance(m, str):
            lines.append(f"  {title}: {m}")
            continue
        lines += [f"  {title}:",
                  f"    arguments                  {m['arguments'] / MB:10.1f} MiB",
                  f"    temporaries                {m['temporaries'] / MB:10.1f} MiB",
                  f"    outputs (not aliased)      {(m['outputs'] - m['aliased']) / MB:10.1f} MiB",
                  f"    peak                       {m['peak'] / MB:10.1f} MiB"]
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="var-jax plan")
    parser.add_argument("--config", required=True, help="a config name in configs/ or a path (e.g. configs/var_d30.py)")
    parser.add_argument("--mesh", required=True, help="axis sizes, e.g. data=4,fsdp=8,model=1 (missing axes are 1)")
    parser.add_argument("--batch", type=int, required=True, help="global training batch")
    parser.add_argument("--sample-batch", type=int, default=None,
                        help="also plan the sampler for this many images (default: none)")
    parser.add_argument("--no-train", action="store_true", help="skip the train step")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    return parser


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax.config import load_config
    from var_jax.parallel import parse_mesh
    mesh_sizes = parse_mesh(args.mesh)
    if -1 in mesh_sizes.values():
        raise ValueError(f"--mesh {args.mesh}: the planner needs every axis size spelled out (no -1)")
    config = load_config(args.config, overrides)  # a bad config fails before devices are set up
    _use_fake_devices(math.prod(mesh_sizes.values()))
    report = plan(config, mesh_sizes, args.batch, args.sample_batch, train=not args.no_train)
    print(json.dumps(report) if args.json else format_report(report))


def main(argv: list[str] | None = None) -> int:
    from var_jax.config import split_overrides
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    try:
        run(args, overrides)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        print(f"var-jax plan: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
