"""Check var-jax against tensors recorded from the official PyTorch VAR.

``python -m var_jax.parity FIXTURE.npz`` reads a fixture (format: ``tests/fixtures/README.md``),
builds both models from its ``config_json``, converts its official weights, recomputes every
reference output it holds and prints one line per check.  The exit code is non-zero if any check
fails or cannot be run.  Token indices must be equal; floats agree within 1e-4 absolute.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.convert import var_from_official, vae_from_official
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE, VQVAEConfig
from var_jax.ops.resample import resize

FLOAT_TOL = 1e-4


@dataclass
class Check:
    name: str
    error: float | None  # max abs error; None when the check could not run
    tol: float
    note: str = ""

    @property
    def status(self) -> str:
        if self.error is None:
            return "missing"
        return "ok" if self.error <= self.tol else "FAIL"


def configs_from_fixture(cfg: dict) -> tuple[VQVAEConfig, VARConfig]:
    vae_cfg = VQVAEConfig.from_dict(cfg["vae"])
    var_kw = dict(cfg["var"])
    var_kw.setdefault("patch_nums", vae_cfg.v_patch_nums)
    var_kw.setdefault("vocab_size", vae_cfg.vocab_size)
    var_kw.setdefault("Cvae", vae_cfg.z_channels)
    return vae_cfg, VARConfig.from_dict(var_kw)


def nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def _err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(ours - ref))) if ours.size else 0.0


def _index_err(ours, ref) -> float:
    """Number of differing token indices (0 means equal)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float("inf") if ours.shape != ref.shape else float(np.sum(ours != ref))


def run_checks(fx) -> list[Check]:
    """Every check of the fixture format.  A reference the fixture lacks is ``missing``; a
    computation that raises is a ``FAIL`` with the error as its note."""
    cfg = json.loads(str(fx["config_json"]))
    vae_cfg, var_cfg = configs_from_fixture(cfg)
    state_dict = lambda prefix: {k[len(prefix):]: fx[k] for k in fx.files if k.startswith(prefix)}
    vae = vae_from_official(state_dict("vae/"), vae_cfg)
    var = var_from_official(state_dict("var/"), var_cfg)
    has = set(fx.files)
    checks: list[Check] = []

    def add(name: str, compute: Callable[[], object], index: bool = False):
        tol = 0.0 if index else FLOAT_TOL
        if name not in has:
            checks.append(Check(name, None, tol, "not in the fixture"))
            return
        try:
            ours = compute()
        except Exception as e:  # report and go on with the other checks
            checks.append(Check(name, float("inf"), tol, f"{type(e).__name__}: {e}"))
            return
        checks.append(Check(name, _index_err(ours, fx[name]) if index else _err(ours, fx[name]), tol))

    x16 = fx["interp/x16"] if "interp/x16" in has else None
    for name in sorted(k for k in has if k.startswith("interp/") and k != "interp/x16"):
        kind, spec = name.split("/")[1].split("_", 1)
        if kind == "area":
            size = int(spec.split("_to_")[1])
            add(name, lambda s=size: nchw(resize(nhwc(x16), s, "area")))
        else:
            src, dst = (int(v) for v in spec.split("_to_"))
            add(name, lambda s=src, d=dst: nchw(resize(nhwc(x16[:, :, :s, :s]), d, "bicubic")))

    num_scales = len(vae_cfg.v_patch_nums)
    img = lambda: nhwc(fx["img"])
    ref_idx = lambda: [jnp.asarray(fx[f"idx/{k}"]) for k in range(num_scales)]
    # One compiled program per model call: op-by-op dispatch of the convolutions is far slower.
    idx = functools.cache(lambda: nnx.jit(VQVAE.img_to_idx)(vae, img()))
    fhats = functools.cache(lambda: nnx.jit(VQVAE.img_to_fhats)(vae, img()))
    var_logits = nnx.jit(VAR.__call__)
    logits = functools.cache(lambda: var_logits(var, jnp.asarray(fx["label"]), jnp.asarray(fx["var_input"])))
    train = functools.cache(lambda: nnx.jit(VQVAE.__call__)(vae, img()))

    add("enc_f", lambda: nchw(nnx.jit(VQVAE.encode_latent)(vae, img())))
    for k in range(num_scales):
        add(f"idx/{k}", lambda k=k: idx()[k], index=True)
    for k in range(num_scales):
        add(f"fhat/{k}", lambda k=k: nchw(fhats()[k]))
    add("recon", lambda: nchw(nnx.jit(VQVAE.fhat_to_img)(vae, fhats()[-1])))
    add("recon_from_idx", lambda: nchw(nnx.jit(VQVAE.idx_to_img)(vae, ref_idx())))
    add("var_input", lambda: nnx.jit(lambda q, i: q.idx_to_var_input(i))(vae.quantize, ref_idx()))
    add("logits", logits)
    add("logits_uncond", lambda: var_logits(var, jnp.full_like(jnp.asarray(fx["label"]), var_cfg.num_classes),
                                            jnp.asarray(fx["var_input"])))
    add("ce_loss", lambda: -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits()), jnp.concatenate(ref_idx(), axis=1)[..., None], -1)))
    add("train/rec", lambda: nchw(train()[0]))
    add("train/vq_loss", lambda: train()[1])

    sample = functools.cache(lambda: _greedy_sample(fx, vae, var, cfg))
    for k in range(num_scales):
        add(f"sample/idx/{k}", lambda k=k: sample().tokens[k], index=True)
    add("sample/img", lambda: nchw(sample().images))
    return checks


def _greedy_sample(fx, vae, var, cfg):
    """Guided sampling with top_k=1 (greedy, so deterministic), as the fixture's ``sample/*``."""
    from var_jax.sample import Sampler, SamplingSettings

    settings = SamplingSettings(cfg=float(cfg.get("sample", {}).get("cfg", 1.5)), top_k=1)
    return Sampler(vae, var, settings, uint8=False)(fx["sample/labels"])


def format_report(checks: list[Check], rule: str = f"indices must be equal, floats within {FLOAT_TOL:g}",
                  error: str = "max_abs_err") -> str:
    """One line per check, then the counts and the ``rule`` the tolerances follow."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {error:>12}  {'tol':>7}  status"]
    for c in checks:
        err = "-" if c.error is None else f"{c.error:12.3e}"
        note = f"  ({c.note})" if c.note else ""
        lines.append(f"{c.name:<{width}}  {err:>12}  {c.tol:7.0e}  {c.status}{note}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "FAIL", "missing")}
    lines.append(f"{counts['ok']} ok, {counts['FAIL']} FAIL, {counts['missing']} missing (of {len(checks)} checks; {rule})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m var_jax.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("fixture", help="an .npz recorded from the official code")
    args = parser.parse_args(argv)
    try:
        fx = np.load(args.fixture)
    except (OSError, ValueError) as e:
        print(f"cannot read fixture {args.fixture!r}: {e}", file=sys.stderr)
        return 2
    from var_jax import training_replay
    training = training_replay.is_training_fixture(fx)
    try:
        with jax.default_matmul_precision("highest"):
            checks = training_replay.replay_checks(fx) if training else run_checks(fx)
    except (KeyError, ValueError) as e:
        print(f"cannot check {args.fixture!r}: {e}", file=sys.stderr)
        return 2
    print(training_replay.format_report(checks) if training else format_report(checks))
    return 0 if all(c.status == "ok" for c in checks) else 1


if __name__ == "__main__":
    from var_jax import compile_cache
    compile_cache.enable()  # as `var-jax parity` does: a second check loads its programs instead of compiling
    sys.exit(main())
