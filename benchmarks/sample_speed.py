"""Sampling speed: one JSON line per run (a run = one batch size), compile excluded from s_per_call.

    python benchmarks/sample_speed.py --config var_d16 --batch 1 --cfg 4 --top-k 900 --top-p 0.95 --repeats 3

Random weights unless --ckpt names a var-jax model directory.  Besides the whole program it times
the transformer part (all scales, no decode) and the decode alone, and reports XLA's FLOP count of
each compiled program with the achieved GFLOP/s.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from var_jax.config import load_config, model_configs
from var_jax.models.state import init_model
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE
from var_jax.sample import Sampler, SamplingSettings, generate


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="var_d16", help="name in configs/ or a path")
    ap.add_argument("--ckpt", help="var-jax model directory (default: random weights)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="compute dtype of both models")
    args, overrides = ap.parse_known_args()

    if args.ckpt:
        from var_jax.checkpoint import load_pretrained
        vae, var, _ = load_pretrained(args.ckpt, dtype=args.dtype)
    else:
        vae_cfg, var_cfg = model_configs(load_config(args.config, overrides))
        vae = init_model(VQVAE, type(vae_cfg).from_dict({**vae_cfg.to_dict(), "dtype": args.dtype}), seed=0)
        var = init_model(VAR, type(var_cfg).from_dict({**var_cfg.to_dict(), "dtype": args.dtype}), seed=1)
    settings = SamplingSettings(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
    sampler = Sampler(vae, var, settings)
    (g_vae, s_vae), (g_var, s_var) = nnx.split(vae), nnx.split(var)

    @functools.partial(jax.jit, static_argnums=0)
    def transformer_only(batch, s_vae, s_var, key):
        labels = jnp.arange(batch, dtype=jnp.int32) % var.cfg.num_classes
        return generate(nnx.merge(g_vae, s_vae), nnx.merge(g_var, s_var), labels, key, settings)[0]

    @jax.jit
    def decode_only(s_vae, f_hat):
        return nnx.merge(g_vae, s_vae).fhat_to_img(f_hat)

    for batch in args.batch:
        key = jax.random.key(0)
        labels = jnp.arange(batch, dtype=jnp.int32) % var.cfg.num_classes
        t0 = time.perf_counter()
        whole = sampler.lower(batch).compile()
        compile_s = time.perf_counter() - t0
        run = lambda: whole(sampler.states, labels, key, None)
        s_per_call = _time(run, args.repeats)
        tf = transformer_only.lower(batch, s_vae, s_var, key).compile()
        transformer_s = _time(lambda: tf(s_vae, s_var, key), args.repeats)
        f_hat = tf(s_vae, s_var, key)
        dec = decode_only.lower(s_vae, f_hat).compile()
        decode_s = _time(lambda: dec(s_vae, f_hat), args.repeats)
        tf_flops, dec_flops = _flops(tf), _flops(dec)
        line = {
            "bench": "sample_speed", "config": args.ckpt or args.config, "batch": batch, "dtype": args.dtype,
            "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "repeats": args.repeats,
            "s_per_call": round(s_per_call, 4), "s_per_img": round(s_per_call / batch, 4),
            "img_per_s": round(batch / s_per_call, 4), "compile_s": round(compile_s, 2),
            "transformer_s": round(transformer_s, 4), "decode_s": round(decode_s, 4),
            "transformer_gflop": tf_flops and round(tf_flops / 1e9, 1),
            "decode_gflop": dec_flops and round(dec_flops / 1e9, 1),
            "transformer_gflop_per_s": tf_flops and round(tf_flops / 1e9 / transformer_s, 1),
            "decode_gflop_per_s": dec_flops and round(dec_flops / 1e9 / decode_s, 1),
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
