"""Check var-jax against tensors recorded from the official PyTorch VAR.

``python -m var_jax.parity FIXTURE.npz`` reads a fixture (format: ``tests/fixtures/README.md``),
builds both models from its ``config_json``, converts its official weights, recomputes every
reference output it holds and prints one line per check.  The exit code is non-zero if any check
fails or cannot be run.  Token indices must be equal; floats agree within 1e-4 absolute.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from var_jax.convert import var_from_official, vae_from_official
from var_jax.models.var import VARConfig
from var_jax.models.vqvae import VQVAEConfig
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
    cfg = json.loads(str(fx["config_json"]))
    vae_cfg, var_cfg = configs_from_fixture(cfg)
    sd = lambda prefix: {k[len(prefix):]: fx[k] for k in fx.files if k.startswith(prefix)}
    vae = vae_from_official(sd("vae/"), vae_cfg)
    var = var_from_official(sd("var/"), var_cfg)
    checks: list[Check] = []
    has = set(fx.files)

    def add(name: str, compute: Callable[[], tuple], index: bool = False):
        if name not in has:
            return
        try:
            ours = compute()
        except NotImplementedError as e:
            checks.append(Check(name, None, 0.0 if index else FLOAT_TOL, str(e)))
            return
        err = _index_err(ours, fx[name]) if index else _err(ours, fx[name])
        checks.append(Check(name, err, 0.0 if index else FLOAT_TOL))

    x16 = fx["interp/x16"] if "interp/x16" in has else None
    for name in sorted(k for k in has if k.startswith("interp/") and k != "interp/x16"):
        kind, spec = name.split("/")[1].split("_", 1)
        if kind == "area":
            size = int(spec.split("_to_")[1])
            add(name, lambda s=size: np.asarray(resize(nhwc(x16), s, "area")).transpose(0, 3, 1, 2))
        else:
            src, dst = (int(v) for v in spec.split("_to_"))
            add(name, lambda s=src, d=dst: np.asarray(resize(nhwc(x16[:, :, :s, :s]), d, "bicubic")).transpose(0, 3, 1, 2))

    img = nhwc(fx["img"])
    num_scales = len(vae_cfg.v_patch_nums)
    ref_idx = [jnp.asarray(fx[f"idx/{k}"]) for k in range(num_scales)] if f"idx/{num_scales - 1}" in has else None
    to_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)

    add("enc_f", lambda: to_nchw(vae.encode_latent(img)))
    idx = vae.img_to_idx(img)
    for k in range(num_scales):
        add(f"idx/{k}", lambda k=k: idx[k], index=True)
    fhats = vae.img_to_fhats(img)
    for k in range(num_scales):
        add(f"fhat/{k}", lambda k=k: to_nchw(fhats[k]))
    add("recon", lambda: to_nchw(vae.fhat_to_img(fhats[-1])))
    if ref_idx is not None:
        add("recon_from_idx", lambda: to_nchw(vae.idx_to_img(ref_idx)))
        add("var_input", lambda: vae.quantize.idx_to_var_input(ref_idx))
    label = jnp.asarray(fx["label"]) if "label" in has else None
    x_in = jnp.asarray(fx["var_input"]) if "var_input" in has else None
    if label is not None and x_in is not None:
        logits = var(label, x_in)
        add("logits", lambda: logits)
        add("logits_uncond", lambda: var(jnp.full_like(label, var_cfg.num_classes), x_in))
        if ref_idx is not None:
            target = jnp.concatenate(ref_idx, axis=1)
            add("ce_loss", lambda: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1)))
    rec, vq_loss, _ = vae(img)
    add("train/rec", lambda: to_nchw(rec))
    add("train/vq_loss", lambda: vq_loss)
    _sampling_checks(fx, vae, var, cfg, add)
    return checks


def _sampling_checks(fx, vae, var, cfg, add) -> None:
    """Greedy guided sampling against ``sample/*`` (top_k=1, so deterministic)."""
    num_scales = len(var.cfg.patch_nums)

    def unavailable():
        raise NotImplementedError("the compiled sampler is not part of var-jax yet")

    for k in range(num_scales):
        add(f"sample/idx/{k}", unavailable, index=True)
    add("sample/img", unavailable)


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'max_abs_err':>12}  {'tol':>7}  status"]
    for c in checks:
        err = "-" if c.error is None else f"{c.error:12.3e}"
        note = f"  ({c.note})" if c.note else ""
        lines.append(f"{c.name:<{width}}  {err:>12}  {c.tol:7.0e}  {c.status}{note}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "FAIL", "missing")}
    lines.append(f"{counts['ok']} ok, {counts['FAIL']} FAIL, {counts['missing']} missing "
                 f"(of {len(checks)} checks; indices must be equal, floats within {FLOAT_TOL:g})")
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
    with jax.default_matmul_precision("highest"):
        checks = run_checks(fx)
    print(format_report(checks))
    return 0 if all(c.status == "ok" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
