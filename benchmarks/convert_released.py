"""Converting a released-size checkpoint without torch: exactness of the result.

  python benchmarks/convert_released.py write DIR [--depth 16]   # needs torch; writes vae.pth, var.pth, reference.npz
  /usr/bin/time -v var-jax convert --vae DIR/vae.pth --var DIR/var.pth --out DIR/converted   # no torch needed
  python benchmarks/convert_released.py check DIR                 # one JSON line: the largest logit error

``write`` builds the released tokenizer and VAR (configs/var_d<depth>.py) with random weights (their
initialisation plus noise, so no parameter is zero or one), writes their official state dicts with
``torch.save`` as the released files are written (plain state dicts), and records teacher-forced
logits of the source models: a random image → tokens → ``VAR(label, var_input)``, for one class and
the unconditional one.  ``check`` recomputes them with the converted models.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE


def teacher_forced_logits(vae: VQVAE, var: VAR, img: np.ndarray, labels: np.ndarray) -> np.ndarray:
    idx = nnx.jit(VQVAE.img_to_idx)(vae, jnp.asarray(img))
    var_input = nnx.jit(lambda q, i: q.idx_to_var_input(i))(vae.quantize, idx)
    return np.asarray(nnx.jit(VAR.__call__)(var, jnp.asarray(labels), var_input))


def write(out: pathlib.Path, depth: int) -> None:
    import torch

    from var_jax import convert
    from var_jax.config import load_config, model_configs
    from var_jax.models.state import assign_flat_state, flat_state, init_model

    vae_cfg, var_cfg = model_configs(load_config(f"var_d{depth}"))
    rng = np.random.default_rng(0)
    models = []
    for cls, cfg, seed in ((VQVAE, vae_cfg, 0), (VAR, var_cfg, 1)):
        model = init_model(cls, cfg, seed)
        assign_flat_state(model, {p: np.asarray(v) + rng.normal(0, 0.02, v.shape).astype(v.dtype)
                                  if np.issubdtype(v.dtype, np.floating) else np.asarray(v)
                                  for p, v in flat_state(model).items()})
        models.append(model)
    vae, var = models
    img = rng.uniform(-1, 1, (1, vae_cfg.image_size(), vae_cfg.image_size(), 3)).astype(np.float32)
    labels = np.array([207, var_cfg.num_classes])
    logits = teacher_forced_logits(vae, var, np.repeat(img, 2, axis=0), labels)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "reference.npz", img=img, labels=labels, logits=logits)
    for name, sd in (("vae", convert.vae_to_official(vae)), ("var", convert.var_to_official(var))):
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, out / f"{name}.pth")
    print(json.dumps({"wrote": str(out), "logits_shape": list(logits.shape), "logits_std": float(logits.std())}))


def check(out: pathlib.Path) -> None:
    from var_jax.checkpoint import load_pretrained

    ref = np.load(out / "reference.npz")
    start = time.perf_counter()
    vae, var, _ = load_pretrained(out / "converted")
    load_s = time.perf_counter() - start
    logits = teacher_forced_logits(vae, var, np.repeat(ref["img"], 2, axis=0), ref["labels"])
    print(json.dumps({"max_abs_logit_error": float(np.abs(logits - ref["logits"]).max()),
                      "logits_absmax": float(np.abs(ref["logits"]).max()), "load_s": round(load_s, 1),
                      "backend": jax.default_backend()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("write", "check"))
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--depth", type=int, default=16)
    args = parser.parse_args()
    write(args.dir, args.depth) if args.mode == "write" else check(args.dir)


if __name__ == "__main__":
    main()
