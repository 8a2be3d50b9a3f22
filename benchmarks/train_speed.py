"""VAR training speed: the real compiled train step (optimizer, clipping, metrics included) on
random tokens, as one JSON line: step time, images/s, tokens/s, compile time and, on a device
whose peak is known, model FLOPs utilisation.

    python benchmarks/train_speed.py --config var_d16 --batch 64 [--steps 10] [--images] [--config.key=value]

The mesh is the config's (all devices on ``data`` by default; ``--config.mesh.fsdp=8`` ...), and so is
the rematerialisation (``--config.var.remat=auto`` picks the first policy whose step fits the device,
as ``var-jax train`` does).
``--images`` also runs the frozen tokenizer's encoder inside the step (training without
pre-tokenized maps).  Model FLOPs count the work of the model as written (the block-causal
attention is computed densely, as the official code does): 3 × 2 × multiply-adds of the forward;
with ``--images`` the tokenizer's forward (XLA's count of ``img_to_idx``) is added.  The machine's
floor, its own matrix-multiply rate in float32 and bfloat16 (benchmarks/floor.py), is measured in
the same run; ``fraction_of_floor`` is the achieved model rate over the floor of the compute dtype.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from floor import floors, xla_flops

from var_jax import parallel, xla_cpu
from var_jax.config import load_config, model_configs
from var_jax.models.flops import train_flops_per_image
from var_jax.train.step_memory import resolve_auto_remat
from var_jax.train.var_schedule import RunLength
from var_jax.train.var_trainer import TrainProgram, abstract_batch

# Dense bf16 peak per device (FLOP/s), from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12}


def peak_flops(device) -> float | None:
    kind = device.device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def main() -> None:
    xla_cpu.prepare_command()  # as the var-jax command does
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="var_d16", help="name in configs/ or a path")
    ap.add_argument("--batch", type=int, required=True, help="global batch")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    ap.add_argument("--images", action="store_true", help="tokenize images inside the step")
    args, overrides = ap.parse_known_args()
    config = load_config(args.config, overrides)
    config.train.batch_size = args.batch
    config = resolve_auto_remat(config, images=args.images)  # --config.var.remat=auto: as `var-jax train` picks
    vae_cfg, var_cfg = model_configs(config)
    mesh = parallel.make_mesh(config)
    program = TrainProgram(config, mesh, RunLength.of(num_images=args.batch * 1000, batch_size=args.batch,
                                                      epochs=1.0, steps=1000))

    from flax import nnx

    from var_jax.models.state import init_model
    from var_jax.models.vqvae import VQVAE
    vae = init_model(VQVAE, vae_cfg) if args.images else nnx.eval_shape(lambda: VQVAE(vae_cfg, rngs=nnx.Rngs(0)))
    if args.images:
        tok_graph, tok_state = nnx.split(vae)
    else:  # only the quantizer is needed: build it for real, the rest stays abstract
        tok_graph, abstract_q = nnx.split(vae.quantize)
        tok_state = jax.jit(lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_q))()
    tok_state = jax.device_put(tok_state, parallel.shardings(tok_state, mesh, program.rules))

    shapes = abstract_batch(config, args.batch, images=args.images)
    rng = np.random.default_rng(0)
    host = {"label": rng.integers(0, var_cfg.num_classes, args.batch).astype(np.int32)}
    if args.images:
        host["image"] = rng.integers(0, 256, shapes["image"].shape).astype(np.uint8)
    else:
        host["tokens"] = rng.integers(0, var_cfg.vocab_size, shapes["tokens"].shape).astype(np.int32)
    batch = parallel.global_batch(host, mesh, program.rules)

    step = program.step(tok_graph, tok_state, shapes)
    t0 = time.perf_counter()
    compiled = step.lower(program.abstract_state, shapes, tok_state, jax.ShapeDtypeStruct((), jnp.float32)).compile()
    compile_s = time.perf_counter() - t0
    state = program.init_state()
    weight = np.float32(1)
    state, metrics = compiled(state, batch, tok_state, weight)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, tok_state, weight)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops = train_flops_per_image(var_cfg) * args.batch
    if args.images:
        tokenize = jax.jit(lambda s, img: nnx.merge(tok_graph, s).img_to_idx(img))
        flops += xla_flops(tokenize, tok_state, jax.ShapeDtypeStruct(shapes["image"].shape, jnp.float32))
    floor = floors()
    dtype = program.compute_cfg.dtype
    peak = peak_flops(jax.devices()[0])
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out = {"bench": "var_train_step", "config": args.config, "batch": args.batch, "images_in_step": args.images,
           "dtype": dtype, "remat": program.compute_cfg.remat, "seq_len": var_cfg.seq_len,
           "devices": jax.device_count(), "device": jax.devices()[0].device_kind, "mesh": dict(mesh.shape),
           "compile_s": round(compile_s, 2), "step_s": round(step_s, 4), "steps_timed": args.steps,
           "images_per_s": round(args.batch / step_s, 2), "tokens_per_s": round(args.batch * var_cfg.seq_len / step_s),
           "model_tflops_per_step": round(flops / 1e12, 3), "model_gflop_per_s": round(flops / step_s / 1e9, 1),
           "floor_gflop_per_s": floor, "fraction_of_floor": round(flops / step_s / 1e9 / floor[dtype], 3),
           "xla_tflops_per_step": round(float(cost.get("flops", 0.0)) * jax.device_count() / 1e12, 3) if cost else None,
           "loss": round(float(metrics["loss"]), 4)}
    if peak:
        out["mfu"] = round(flops / step_s / (peak * jax.device_count()), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
