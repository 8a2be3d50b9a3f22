"""What bfloat16 sampling costs in tokens: the fraction of greedy (top-k 1) tokens equal to float32's,
per scale and overall, for the same weights, labels and guidance, as one JSON line.

    python benchmarks/dtype_agreement.py --config var_d16 --batch 4 --cfg 4 [--ckpt DIR]

Random weights unless --ckpt names a var-jax model directory.  Greedy sampling makes the draw
deterministic, so every difference comes from the arithmetic; a token that differs at one scale
changes the input of the next, so later scales also show where earlier ones diverged.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.config import load_config, model_configs
from var_jax.models.state import init_model
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE
from var_jax.sample import Sampler, SamplingSettings, generate


def models(args, dtype: str):
    if args.ckpt:
        from var_jax.checkpoint import load_pretrained
        vae, var, _ = load_pretrained(args.ckpt, dtype=dtype)
        return vae, var
    vae_cfg, var_cfg = model_configs(load_config(args.config, args.overrides))
    with_dtype = lambda cfg: type(cfg).from_dict({**cfg.to_dict(), "dtype": dtype})  # noqa: E731
    return init_model(VQVAE, with_dtype(vae_cfg), seed=0), init_model(VAR, with_dtype(var_cfg), seed=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="var_d16", help="name in configs/ or a path")
    ap.add_argument("--ckpt", help="var-jax model directory (default: random weights)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--dtype", default="bfloat16", help="the dtype compared with float32")
    args, args.overrides = ap.parse_known_args()
    settings = SamplingSettings(cfg=args.cfg, top_k=1)
    tokens = {}
    for dtype in ("float32", args.dtype):
        vae, var = models(args, dtype)
        labels = jnp.arange(args.batch, dtype=jnp.int32) * 7 % var.cfg.num_classes
        sampler = Sampler(vae, var, settings)  # its states: the weights as the sampler keeps them
        run = jax.jit(lambda s_vae, s_var: generate(nnx.merge(sampler.graphdefs[0], s_vae),
                                                    nnx.merge(sampler.graphdefs[1], s_var), labels,
                                                    jax.random.key(0), settings)[1])  # tokens, no decode
        tokens[dtype] = [np.asarray(t) for t in run(*sampler.states)]
    same = [float(np.mean(a == b)) for a, b in zip(tokens["float32"], tokens[args.dtype])]
    sizes = [a.size for a in tokens["float32"]]
    print(json.dumps({"bench": "dtype_agreement", "config": args.ckpt or args.config, "dtype": args.dtype,
                      "batch": args.batch, "cfg": args.cfg,
                      "greedy_tokens_equal": round(float(np.average(same, weights=sizes)), 4),
                      "per_scale": [round(s, 4) for s in same], "device": jax.devices()[0].device_kind}))


if __name__ == "__main__":
    main()
