"""Memory planner: per-device bytes of a model's training and sampling on a given mesh, read off the
compiled programs, before renting the machines.

    var-jax plan --config configs/var_d30.py --mesh data=4,fsdp=8,model=1 --batch 1024
    var-jax plan --config configs/var_d16.py --topology v5e:4x4 --mesh fsdp=16 --batch 256 --remat auto

The train step is the trainer's own (``var_jax.train.var_trainer.lower_train_step``), the sampler
is ``var_jax.sample.Sampler`` on the mesh; both are compiled from abstract inputs (nothing is
allocated).  Parameters and optimizer state are counted from the shardings the step takes them in;
the temporaries (activations, gradients, the KV cache, XLA's scratch) come from XLA's buffer
assignment of the compiled program.

With ``--topology`` the programs are compiled by the TPU compiler (libtpu, the ``tpu`` extra) for
that slice's chips, on a machine with no TPU: its figures are the TPU's, and a step that does not
fit is refused by the compiler itself.  ``--remat auto`` keeps the first policy that fits, chosen by
the same function the trainer uses for ``var.remat=auto`` (``var_jax.train.step_memory``).
Without it the programs are compiled for fake CPU devices, one per mesh position; the CPU compiler
fuses and lays out differently from the GPU and TPU compilers, so its temporaries are an estimate
of theirs (same program, same shardings).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

MB = 1 << 20
GiB = 1 << 30


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


def param_bytes(var_cfg, mesh, rules) -> dict[str, int]:
    """Per-device bytes of the VAR parameters (float32) under the mesh's shardings, and their count."""
    import jax
    from flax import nnx

    from var_jax import parallel
    from var_jax.models.state import abstract_model
    from var_jax.models.var import VAR

    from var_jax.train.step_memory import per_device_bytes

    _, params = nnx.split(abstract_model(VAR, var_cfg), nnx.Param)
    return {"params": per_device_bytes(params, parallel.shardings(params, mesh, rules)),
            "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(params))}


def sampler_memory(vae_cfg, var_cfg, mesh, rules, batch: int, settings=None) -> dict[str, int]:
    """The compiled sampler (uint8 images) for ``batch`` images on ``mesh`` with ``settings``
    (default: those of ``var-jax sample``).  Its two programs run one after the other: both
    programs' arguments (each takes the weights it reads; f̂, the scales' output and the decode's
    input, counts twice: 2 MiB at batch 64) and outputs are held throughout, with the larger of
    their temporaries."""
    from var_jax.models.state import abstract_model
    from var_jax.models.var import VAR
    from var_jax.models.vqvae import VQVAE
    from var_jax.sample import OFFICIAL_SETTINGS, Sampler
    from var_jax.train.step_memory import compiled_memory, with_peak

    settings = OFFICIAL_SETTINGS if settings is None else settings
    sampler = Sampler(abstract_model(VQVAE, vae_cfg), abstract_model(VAR, var_cfg), settings, mesh=mesh,
                      rules=rules)
    tokens, images = (compiled_memory(p) for p in sampler.compile(batch))
    return with_peak({**{k: tokens[k] + images[k] for k in ("arguments", "outputs", "aliased")},
                      "temporaries": max(tokens["temporaries"], images["temporaries"])})


def train_step_memory(config, mesh, batch: int) -> dict[str, int]:
    """The compiled train step's memory, with the parameter and optimizer-state bytes of the
    training state it takes."""
    from var_jax.train.step_memory import train_step_fit
    return train_step_fit(config, mesh, batch, None).memory


def _setup(config, mesh_sizes: dict[str, int], devices, batch: int, sample_batch: int | None):
    """The configs, mesh and rules of a plan, the batches checked against the mesh, and the report's
    common head."""
    from var_jax import parallel
    from var_jax.config import model_configs

    vae_cfg, var_cfg = model_configs(config)
    if var_cfg is None:
        raise ValueError("the config has no 'var' section: the planner sizes VAR training and sampling")
    mesh_cfg = {"mesh": dict(mesh_sizes)}
    mesh = parallel.make_mesh(mesh_cfg, devices)
    rules = parallel.logical_rules(mesh_cfg)
    batch_shards = parallel.batch_shards(mesh, rules)
    for what, b in (("--batch", batch), ("--sample-batch", sample_batch)):
        if b is not None and (b < 1 or b % batch_shards):
            raise ValueError(f"{what} {b} must be a positive multiple of data×fsdp = {batch_shards}")
    report: dict[str, Any] = {"mesh": dict(mesh.shape), "devices": len(devices), "batch": batch,
                              "var": {"depth": var_cfg.depth, "embed_dim": var_cfg.embed_dim, "dtype": var_cfg.dtype,
                                      "remat": var_cfg.remat}}
    report.update(param_bytes(var_cfg, mesh, rules))
    return vae_cfg, var_cfg, mesh, rules, report


def plan(config, mesh_sizes: dict[str, int], batch: int, sample_batch: int | None = None,
         train: bool = True, sampling=None) -> dict[str, Any]:
    """The memory report of ``config`` on a mesh of ``mesh_sizes`` (needs that many devices);
    ``sampling``: the sampler's SamplingSettings (default: those of ``var-jax sample``)."""
    import jax

    devices = jax.devices()[:math.prod(mesh_sizes.values())]
    vae_cfg, var_cfg, mesh, rules, report = _setup(config, mesh_sizes, devices, batch, sample_batch)
    if train:
        report["train_step"] = step = train_step_memory(config, mesh, batch)
        report["optimizer_state"] = step["optimizer_state"]
    if sample_batch and vae_cfg is not None:
        report["sample_batch"] = sample_batch
        report["sampler"] = sampler_memory(vae_cfg, var_cfg, mesh, rules, sample_batch, sampling)
    return report


def plan_tpu(config, topology: str, mesh_sizes: dict[str, int], batch: int, sample_batch: int | None = None,
             remat: str | None = None, train: bool = True, memory_bytes: int | None = None, sampling=None,
             progress=None) -> dict[str, Any]:
    """The plan of ``config`` on TPU slice ``topology`` (``var_jax.tpu_slices`` names), compiled by the
    TPU compiler.  ``mesh_sizes`` may leave one axis -1 (the chips left over).  ``remat``: the
    policy to plan (default: the config's), or ``auto`` for the first of ``REMAT_ORDER`` that fits.
    ``memory_bytes``: what a chip may use (default: its HBM).  ``progress(text)`` hears of each compile."""
    import time

    import jax

    from var_jax import parallel, tpu_slices
    from var_jax.models import flops
    from var_jax.train.step_memory import REMAT_ORDER, choose_remat, out_of_memory, with_remat

    progress = progress or (lambda text: None)
    tpu = tpu_slices.compile_only_slice(topology)
    sizes = parallel.mesh_shape({"mesh": dict(mesh_sizes)}, tpu.chips)
    if math.prod(sizes.values()) != tpu.chips:
        raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} positions but {tpu.name} has {tpu.chips} "
                         f"chips: make the axis sizes multiply to {tpu.chips} (or leave one -1)")
    remat = remat or config.var.remat
    if remat != "auto":
        config = with_remat(config, remat)  # checked by the model's configuration below
    vae_cfg, var_cfg, mesh, rules, report = _setup(with_remat(config, "none") if remat == "auto" else config,
                                                   sizes, tpu.devices, batch, sample_batch)
    budget = tpu.chip.hbm_bytes if memory_bytes is None else memory_bytes
    report.update({"topology": tpu.name, "device_kind": tpu.device_kind, "chips": tpu.chips,
                   "hbm_bytes": tpu.chip.hbm_bytes, "memory_budget_bytes": budget, "remat_asked": remat})
    report["params_bytes"] = report.pop("params")
    report["remat"] = remat
    if train:
        def heard(fit):
            progress(f"remat {fit.describe()}, {'fits' if fit.fits else 'does not fit'} ({fit.compile_s:.0f} s)")

        fit, tried = choose_remat(config, mesh, batch, budget, policies=REMAT_ORDER if remat == "auto" else (remat,),
                                  report=heard)
        kept = fit or tried[-1]
        m = kept.memory
        step_flops = flops.train_flops_per_image(var_cfg) * batch
        report.update({
            "remat": kept.remat, "fits": fit is not None, "compile_s": round(kept.compile_s, 1),
            "optimizer_bytes": m and m["optimizer_state"], "temporaries_bytes": m["temporaries"] if m else kept.refused[1],
            "total_bytes": m and m["peak"], "refused": kept.refused and {"what": kept.refused[0],
                                                                      "needed_bytes": kept.refused[1],
                                                                      "available_bytes": kept.refused[2]},
            "model_flops": step_flops, "peak_flops_per_chip": tpu.chip.peak_flops,
            "step_time_bound_s": step_flops / (tpu.chips * tpu.chip.peak_flops),
            "tried": [{"remat": f.remat, "fits": f.fits, "compile_s": round(f.compile_s, 1),
                       "total_bytes": f.memory and f.memory["peak"],
                       "temporaries_bytes": f.memory["temporaries"] if f.memory else f.refused[1],
                       "compiled": f.memory} for f in tried]})
        report["var"]["remat"] = kept.remat
    if sample_batch and vae_cfg is not None:
        report["sample_batch"] = sample_batch
        start = time.perf_counter()
        try:
            sampler = sampler_memory(vae_cfg, var_cfg, mesh, rules, sample_batch, sampling)
            report["sampler"] = {**sampler, "fits": sampler["peak"] <= budget}
        except jax.errors.JaxRuntimeError as e:  # the compiler refusing a sampler that does not fit is an answer too
            oom = out_of_memory(e)
            if oom is None:
                raise
            report["sampler"] = {"fits": False, "refused": {"what": oom[0], "needed_bytes": oom[1],
                                                            "available_bytes": oom[2]}}
        report["sampler"]["compile_s"] = round(time.perf_counter() - start, 1)
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
        lines += [f"  {title}:",
                  f"    arguments                  {m['arguments'] / MB:10.1f} MiB",
                  f"    temporaries                {m['temporaries'] / MB:10.1f} MiB",
                  f"    outputs (not aliased)      {(m['outputs'] - m['aliased']) / MB:10.1f} MiB",
                  f"    peak                       {m['peak'] / MB:10.1f} MiB"]
    return "\n".join(lines)


def format_tpu_report(r: dict[str, Any]) -> str:
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
    v = r["var"]
    gib = lambda b: "-" if b is None else f"{b / GiB:.2f} GiB"  # noqa: E731
    lines = [f"VAR d{v['depth']} (width {v['embed_dim']}, {r['param_count'] / 1e6:.1f}M parameters) on "
             f"{r['topology']}: {r['chips']} × {r['device_kind']}, {gib(r['hbm_bytes'])} HBM each"
             + (f" (planned to {gib(r['memory_budget_bytes'])})" if r["memory_budget_bytes"] != r["hbm_bytes"] else "")
             + f", mesh {mesh}"]
    if "tried" in r:
        lines.append(f"  train step, global batch {r['batch']}, remat {r['remat_asked']}:")
        for t in r["tried"]:
            verdict = "fits" if t["fits"] else ("refused by the compiler" if t["total_bytes"] is None else "too big")
            lines.append(f"    remat {t['remat']:34s} temporaries {gib(t['temporaries_bytes']):>11s}, "
                         f"total {gib(t['total_bytes']):>11s}  {verdict} ({t['compile_s']:.0f} s)")
        lines += [f"  {'fits' if r['fits'] else 'does NOT fit'} with remat {r['remat']}; per chip:",
                  f"    parameters (float32)       {gib(r['params_bytes']):>11s}",
                  f"    optimizer state (AdamW)    {gib(r['optimizer_bytes']):>11s}",
                  f"    temporaries                {gib(r['temporaries_bytes']):>11s}"
                  + (f" asked for ({r['refused']['what']})" if r["refused"] else ""),
                  f"    total                      {gib(r['total_bytes']):>11s} of {gib(r['memory_budget_bytes'])}",
                  f"  model FLOPs of a step {r['model_flops']:.3e}: at least {r['step_time_bound_s'] * 1e3:.0f} ms a "
                  f"step at {r['chips']} × {r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s (bf16 peak)"]
    if "sampler" in r:
        m = r["sampler"]
        size = (f"arguments {gib(m['arguments'])}, temporaries {gib(m['temporaries'])}, peak {gib(m['peak'])}"
                if "peak" in m else f"{m['refused']['what']} {gib(m['refused']['needed_bytes'])} asked for")
        lines.append(f"  sampler, batch {r['sample_batch']}, compute {v['dtype']}: {size}, "
                     f"{'fits' if m['fits'] else 'does NOT fit'} ({m['compile_s']:.0f} s)")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="var-jax plan")
    parser.add_argument("--config", required=True, help="a config name in configs/ or a path (e.g. configs/var_d30.py)")
    parser.add_argument("--mesh", required=True, help="axis sizes, e.g. data=4,fsdp=8,model=1 (missing axes are 1; "
                        "with --topology one may be -1, the chips left over)")
    parser.add_argument("--batch", type=int, required=True, help="global training batch")
    parser.add_argument("--sample-batch", type=int, default=None,
                        help="also plan the sampler for this many images (default: none)")
    parser.add_argument("--no-train", action="store_true", help="skip the train step")
    parser.add_argument("--topology", default=None,
                        help="compile with the TPU compiler for this slice (needs the tpu extra; no TPU needed), "
                             "e.g. v5e:4x4, v5p:4x4x4, v4:2x2x2, v6e:8x8, or a rented name: v5litepod-32, v5p-128")
    parser.add_argument("--remat", default=None,
                        help="rematerialisation: none, full, a jax.checkpoint_policies name, or (with --topology) "
                             "auto: the least recomputation that fits (default: the config's var.remat)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="with --topology: what a chip may use, in GiB (default: its HBM)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line (with --topology: the table "
                        "and then the JSON line; without: the table)")
    return parser


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax.config import load_config
    from var_jax.parallel import parse_mesh
    mesh_sizes = parse_mesh(args.mesh)
    config = load_config(args.config, overrides)  # a bad config fails before devices are set up
    if args.topology is None:
        if -1 in mesh_sizes.values():
            raise ValueError(f"--mesh {args.mesh}: the planner needs every axis size spelled out (no -1)")
        if args.remat == "auto" or args.memory_gib is not None:
            raise ValueError("--remat auto and --memory-gib need --topology: only the TPU compiler says what fits a chip")
        if args.remat is not None:
            config.var.remat = args.remat
        _use_fake_devices(math.prod(mesh_sizes.values()))
        report = plan(config, mesh_sizes, args.batch, args.sample_batch, train=not args.no_train)
        print(json.dumps(report) if args.json else format_report(report))
        return
    import jax
    jax.config.update("jax_platforms", "cpu")  # compiling for the topology needs no TPU, and takes none in use
    # Executables of compile-only devices cannot be read back from JAX's persistent cache.
    jax.config.update("jax_enable_compilation_cache", False)
    memory = None if args.memory_gib is None else int(args.memory_gib * GiB)
    report = plan_tpu(config, args.topology, mesh_sizes, args.batch, args.sample_batch, args.remat,
                      train=not args.no_train, memory_bytes=memory,
                      progress=lambda text: print(f"  compiled: {text}", file=sys.stderr, flush=True))
    if not args.json:
        print(format_tpu_report(report))
    print(json.dumps(report))


def main(argv: list[str] | None = None) -> int:
    from var_jax.config import split_overrides
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    try:
        run(args, overrides)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"var-jax plan: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
