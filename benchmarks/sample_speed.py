"""Sampling speed: one JSON line per run (a run = one batch size), compile excluded from s_per_call.

    python benchmarks/sample_speed.py --config var_d16 --batch 1 8 --cfg 4 --top-k 900 --top-p 0.95 --repeats 3

Random weights unless --ckpt names a var-jax model directory.  Besides the sampler's call it times
(unless --no-breakdown) the transformer part (all scales with their draws, no decode), the draws
alone (top-k, top-p and the categorical draw on every scale's logits), each scale on its own (one
compiled step per scale, so their sum is a little above the transformer time), and the decode
alone.  The transformer's FLOPs are counted from the shapes (XLA's cost analysis counts a scanned
layer once); the decoder's are XLA's count.
The machine's floor, its own matrix-multiply rate in float32 and bfloat16 (benchmarks/floor.py), is
measured in the same run: ``fraction_of_floor`` is the achieved rate over the floor of ``--dtype``,
and ``floor_s_per_img`` the time one image would take at that rate.  So is the rate at which it reads
memory: a scale of few tokens cannot be faster than one read of the transformer's weights, so
``roofline_s_per_img`` counts each scale as the longer of its FLOPs at the floor and that read, and
``fraction_of_roofline`` is that time over the measured one.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import warnings

from floor import floors, median_time, read_gb_per_s, xla_flops

import jax
import jax.numpy as jnp
from flax import nnx

from var_jax import xla_cpu
from var_jax.config import load_config, model_configs
from var_jax.models.state import init_model
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE
from var_jax.ops.sampling import filter_top_k_top_p, gumbel_noise, sample_categorical
from var_jax.sample import Sampler, SamplingSettings, decode, generate, scale_step, start


def scale_flops(cfg: VARConfig, batch: int, si: int) -> float:
    """Multiply-adds ×2 of scale ``si`` for ``batch`` images: the sampler runs 2·batch rows
    (conditional and null class) through every layer.  The AdaLN modulation depends on the class
    only: the sampler computes it once, counted here with the first scale."""
    rows = 2 * batch
    begin, end = cfg.begin_ends()[si]
    n, C, V = end - begin, cfg.embed_dim, cfg.vocab_size
    per_token_layer = 4 * C * C + 2 * C * cfg.mlp_hidden + 2 * C * end  # qkv+proj, mlp, scores+mix
    ada = 0 if cfg.shared_aln or si else 6 * C * C  # per row and layer, once
    per_row = cfg.depth * (n * per_token_layer + ada) + n * (C * V + cfg.Cvae * C) + 2 * C * C
    return 2.0 * rows * per_row


def main():
    xla_cpu.prepare_command()  # as the var-jax command does
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="var_d16", help="name in configs/ or a path")
    ap.add_argument("--ckpt", help="var-jax model directory (default: random weights)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="compute dtype of both models")
    ap.add_argument("--no-per-scale", action="store_true", help="skip timing each scale on its own")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="time the sampler's call only (compiles no transformer, draws, decode or per-scale programs)")
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
    (g_vae, g_var), (s_vae, s_var) = sampler.graphdefs, sampler.states  # as the sampler holds them
    models = lambda s_vae, s_var: (nnx.merge(g_vae, s_vae), nnx.merge(g_var, s_var))
    floor = floors()
    peak = floor[args.dtype]
    read_rate = read_gb_per_s()
    weight_gb = sum(a.nbytes for a in jax.tree.leaves(s_var)) / 1e9  # as the sampler holds them

    @jax.jit
    def transformer_only(s_vae, s_var, labels, key):
        return generate(*models(s_vae, s_var), labels, key, settings)[0]

    @jax.jit
    def begin(s_vae, s_var, labels, key):
        return start(*models(s_vae, s_var), labels, key)

    # The cache is updated in place; the other parts of the carry change shape from scale to scale.
    warnings.filterwarnings("ignore", "Some donated buffers were not usable")

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=4)
    def step(si, s_vae, s_var, ctx, carry, key):
        return scale_step(*models(s_vae, s_var), ctx, carry, si, key, settings)[0]

    @jax.jit
    def draws_only(logits, key):  # as the sampler draws: the noise of every scale at once
        noise = gumbel_noise(key, (logits[0].shape[0], var.cfg.seq_len, var.cfg.vocab_size))
        return [sample_categorical(filter_top_k_top_p(g, settings.top_k, settings.top_p), noise[:, begin:end])
                for g, (begin, end) in zip(logits, var.cfg.begin_ends())]

    @jax.jit
    def decode_only(s_vae, f_hat):  # as the sampler decodes (one image at a time on a CPU)
        return decode(nnx.merge(g_vae, s_vae), f_hat)

    @jax.jit
    def decode_batched(s_vae, f_hat):  # the same FLOPs, counted whole (XLA counts a loop's body once)
        return nnx.merge(g_vae, s_vae).fhat_to_img(f_hat)

    for batch in args.batch:
        key = jax.random.key(0)
        labels = jnp.arange(batch, dtype=jnp.int32) % var.cfg.num_classes
        t0 = time.perf_counter()
        sampler.compile(batch)  # both programs, as a first call compiles them
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(sampler(labels, key=key))  # first call: not timed
        s_per_call = median_time(lambda: sampler(labels, key=key), args.repeats)
        f_hat_shape = jax.eval_shape(transformer_only, s_vae, s_var, labels, key)
        decode_flops = xla_flops(decode_batched, s_vae, f_hat_shape)
        flops = [scale_flops(var.cfg, batch, si) for si in range(len(var.cfg.patch_nums))]
        total_gflop = (sum(flops) + decode_flops) / 1e9
        # Roofline: each scale takes at least its FLOPs at the floor and at least one read of the weights.
        scale_bound_s = [max(f / 1e9 / peak, weight_gb / read_rate) for f in flops]
        roofline_s = sum(scale_bound_s) + decode_flops / 1e9 / peak
        rate = lambda gflop, s: round(gflop / s, 1)  # noqa: E731
        line = {
            "bench": "sample_speed", "config": args.ckpt or args.config, "batch": batch, "dtype": args.dtype,
            "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "repeats": args.repeats,
            "s_per_call": round(s_per_call, 4), "s_per_img": round(s_per_call / batch, 4),
            "img_per_s": round(batch / s_per_call, 4), "compile_s": round(compile_s, 2),
            "floor_gflop_per_s": floor, "gflop_per_s": rate(total_gflop, s_per_call),
            "fraction_of_floor": round(total_gflop / s_per_call / peak, 3),
            "floor_s_per_img": round(total_gflop / peak / batch, 4),
            "read_gb_per_s": round(read_rate, 1), "weight_gb": round(weight_gb, 3),
            "roofline_s_per_img": round(roofline_s / batch, 4), "fraction_of_roofline": round(roofline_s / s_per_call, 3),
            "transformer_gflop": round(sum(flops) / 1e9, 1), "decode_gflop": round(decode_flops / 1e9, 1),
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        }
        if args.no_breakdown:
            print(json.dumps(line), flush=True)
            continue
        f_hat = jax.block_until_ready(transformer_only(s_vae, s_var, labels, key))  # compiles: not timed
        transformer_s = median_time(lambda: transformer_only(s_vae, s_var, labels, key), args.repeats)
        jax.block_until_ready(decode_only(s_vae, f_hat))
        decode_s = median_time(lambda: decode_only(s_vae, f_hat), args.repeats)
        logits = [jax.random.normal(jax.random.key(si), (batch, pn * pn, var.cfg.vocab_size)) * 3
                  for si, pn in enumerate(var.cfg.patch_nums)]
        jax.block_until_ready(draws_only(logits, key))
        draws_s = median_time(lambda: draws_only(logits, key), args.repeats)
        per_scale = []
        if not args.no_per_scale:
            def scale_times():
                ctx, carry = jax.block_until_ready(begin(s_vae, s_var, labels, key))
                times = []
                for si in range(len(var.cfg.patch_nums)):
                    t0 = time.perf_counter()
                    carry = jax.block_until_ready(step(si, s_vae, s_var, ctx, carry, key))
                    times.append(time.perf_counter() - t0)
                return times
            scale_times()  # compiles every step
            runs = [scale_times() for _ in range(args.repeats)]
            per_scale = [statistics.median(r[si] for r in runs) for si in range(len(var.cfg.patch_nums))]
        line.update({
            "transformer_s": round(transformer_s, 4), "draws_s": round(draws_s, 4), "decode_s": round(decode_s, 4),
            "transformer_gflop_per_s": rate(sum(flops) / 1e9, transformer_s),
            "transformer_fraction_of_floor": round(sum(flops) / 1e9 / transformer_s / peak, 3),
            "decode_gflop_per_s": rate(decode_flops / 1e9, decode_s),
            "decode_fraction_of_floor": round(decode_flops / 1e9 / decode_s / peak, 3),
            "per_scale": [{"pn": pn, "s": round(t, 4), "gflop_per_s": rate(f / 1e9, t),
                           "fraction_of_floor": round(f / 1e9 / t / peak, 3),
                           "fraction_of_roofline": round(bound / t, 3)}
                          for pn, t, f, bound in zip(var.cfg.patch_nums, per_scale, flops, scale_bound_s)],
        })
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
