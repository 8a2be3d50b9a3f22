"""Teacher-forced VAR forward: compile time and run time (median) for a config, as one JSON line.

    python benchmarks/forward_speed.py --config var_d16 --batch 1 --repeats 5

FLOPs are var_jax.models.flops's count; ``fraction_of_floor`` is the achieved rate over the
machine's matrix-multiply rate in ``--dtype``, measured in the same run (benchmarks/floor.py).
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx
from floor import floors, median_time

from var_jax.config import load_config, model_configs
from var_jax.models.flops import forward_flops_per_image
from var_jax.models.state import init_model
from var_jax.models.var import VAR


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="var_d16", help="name in configs/ or a path")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args, overrides = ap.parse_known_args()
    _, var_cfg = model_configs(load_config(args.config, overrides))
    var_cfg = type(var_cfg).from_dict({**var_cfg.to_dict(), "dtype": args.dtype})
    model = init_model(VAR, var_cfg)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, label, x):
        return nnx.merge(graphdef, state)(label, x)

    label = jnp.zeros((args.batch,), jnp.int32)
    x = jnp.zeros((args.batch, var_cfg.seq_len - var_cfg.patch_nums[0] ** 2, var_cfg.Cvae), jnp.float32)
    t0 = time.perf_counter()
    compiled = forward.lower(state, label, x).compile()
    compile_s = time.perf_counter() - t0
    s_per_call = median_time(lambda: compiled(state, label, x), args.repeats)
    gflop = forward_flops_per_image(var_cfg) * args.batch / 1e9
    floor = floors()
    print(json.dumps({"bench": "var_forward", "config": args.config, "batch": args.batch, "dtype": args.dtype,
                      "seq_len": var_cfg.seq_len, "compile_s": round(compile_s, 3),
                      "s_per_call": round(s_per_call, 4), "repeats": args.repeats,
                      "gflop_per_s": round(gflop / s_per_call, 1), "floor_gflop_per_s": floor,
                      "fraction_of_floor": round(gflop / s_per_call / floor[args.dtype], 3),
                      "device": jax.devices()[0].device_kind}))


if __name__ == "__main__":
    main()
