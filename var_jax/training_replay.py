"""Replay of a training fixture: the official trainer's steps, run by var-jax's own training step.

A training fixture (``tests/fixtures/README.md``, second part) holds the official initial
weights, the token maps and labels of each step (labels already dropped to the null class where
the official class dropout dropped them) and what the official step produced: loss, gradient
norm before clipping, lr and wd, the progressive stage and warm-up factor, the no-decay set and
the weights after the first and the last step.  The replay maps the fixture's official settings
with :func:`var_jax.official_args.train_settings`, builds the optimizer and the compiled
step with :class:`var_jax.train.var_trainer.TrainProgram` exactly as the trainer does, and runs
the steps with label dropout and drop-path off (the fixture's randomness is already taken out).

Tolerances (the fixture README's): lr and wd within 1e-6 relative, loss and gradient norm within
1e-4 relative at every step, each parameter tensor within 1e-3 of how far the reference moved it,
stages, token maps and the no-decay set equal.  To the parameter tolerance one float32 ulp per
element is added: ‖ours − ref‖ ≤ 1e-3·‖ref − init‖ + ‖ulp(ref)‖.  A tensor the step moves by only
a few ulps (in the first step, where the AdaLN gates of 1e-5 make the block gradients far smaller
than Adam's eps) cannot be closer than that: torch rounds the decayed weight before subtracting the
Adam step, a compiled step fuses the two into one rounding, and the results differ by one ulp on
about a third of the elements (‖ours − ref‖ ≈ 0.57·‖ulp‖ measured).  Unfused, torch's order
reproduces the reference to the bit, so nothing else is hidden below that floor.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.config import model_configs
from var_jax.convert import var_buffers, var_entries, var_from_official, var_to_official, vae_from_official
from var_jax.models.state import abstract_model
from var_jax.models.var import VAR
from var_jax.parity import Check, configs_from_fixture, format_report as parity_report

SCHEDULE_TOL = 1e-6   # lr, wd: relative
STEP_TOL = 1e-4       # loss, grad_norm: relative
PARAM_TOL = 1e-3      # ‖ours − ref‖ / ‖ref − init‖ per tensor, plus one ulp per element (above)
# config_json's train keys that are not the official flag names (the others are: tblr, twd, wp_it, ...)
FIXTURE_FLAGS = {"batch": "bs", "steps": "max_it"}


def is_training_fixture(fx) -> bool:
    return "train/loss" in fx.files


def run_config(cfg: dict, train_overrides: Mapping[str, object] | None = None):
    """The var-jax run config of a training fixture's ``config_json`` (float32, label dropout and
    drop-path off), with ``train_overrides`` (train section values) applied last."""
    from var_jax import official_args
    from var_jax.config import var_training

    vae_cfg, var_cfg = configs_from_fixture(cfg)
    var_cfg = dataclasses.replace(var_cfg, cond_drop_rate=0.0, drop_path_rate=0.0)
    # the fixture's names of the official flags; a flag it leaves out takes the official default
    flags = {FIXTURE_FLAGS.get(k, k): v for k, v in cfg["train"].items()}
    config = var_training()
    config.update({"img_size": int(cfg["img"]), "vae": vae_cfg.to_dict(), "var": var_cfg.to_dict()})
    config.train.update(official_args.train_settings(**flags))
    config.train.compute_dtype = "float32"
    config.mesh.data = 1
    config.train.update(dict(train_overrides or {}))
    return config


def _relative(ours, ref) -> tuple[float, int]:
    """(largest |ours − ref| / |ref| over the steps, the step where it is); |ref| = 0 counts absolutely."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf"), -1
    err = np.abs(ours - ref) / np.where(ref == 0, 1.0, np.abs(ref))
    err = np.where(np.isnan(err), np.inf, err)
    worst = int(np.argmax(err))
    return float(err[worst]), worst


def _no_decay_names(model: VAR, decay_mask) -> set[str]:
    """The official names of the parameters that ``decay_mask`` (our tree of flags) leaves undecayed."""
    flat = {tuple(str(getattr(k, "key", k)) for k in path): bool(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(decay_mask))}
    return {name for e in var_entries(model) if not flat[tuple(map(str, e.path))] for name in e.keys}


@dataclasses.dataclass
class Trajectory:
    """What var-jax computed for a training fixture, in the fixture's terms."""
    per_step: dict[str, np.ndarray]  # loss, grad_norm, lr, wd, prog_si (-1: whole), prog_wp, nonfinite
    weights: dict[str, dict[str, np.ndarray]]  # "after_step0", "final": official state dicts
    buffers: set[str]                 # the state dicts' entries that are not parameters
    no_decay: set[str]                # official names the optimizer does not decay
    tokens: list[np.ndarray]          # our token maps (B, L) of each step's images
    steps: int                        # the run's length (config_json's steps)
    num_scales: int
    grad_norm_recorded: bool          # False with clipping off: the official step reports no norm


def replay(fx, train_overrides: Mapping[str, object] | None = None) -> Trajectory:
    """Run the fixture's steps through the trainer's compiled step.  ``train_overrides``
    ({"grad_clip": 0.0} ...) change the run config after the mapping (a deliberately wrong setting
    must make the comparison FAIL)."""
    from var_jax import parallel
    from var_jax.models.vqvae import VQVAE
    from var_jax.parity import nhwc
    from var_jax.train import optim
    from var_jax.train.loop import counters
    from var_jax.train.var_schedule import Progressive, RunLength
    from var_jax.train.var_trainer import TrainProgram

    config = run_config(json.loads(str(fx["config_json"])), train_overrides)
    vae_cfg, var_cfg = model_configs(config)
    steps, batch = int(config.train.steps), int(config.train.batch_size)
    if steps < 1:
        raise ValueError("the fixture's train section gives no 'steps' (the recorded run's max_it)")
    prefixed = lambda prefix: {k[len(prefix):]: fx[k] for k in fx.files if k.startswith(prefix)}  # noqa: E731
    vae = vae_from_official(prefixed("vae/"), vae_cfg)
    var = var_from_official(prefixed("var/"), var_cfg)

    mesh = parallel.make_mesh(config, devices=jax.devices()[:1])
    length = RunLength.of_config(config.train, num_images=batch)  # one step per epoch: counts are in steps
    progressive = Progressive(float(config.train.pg), int(config.train.pg0), len(var_cfg.patch_nums), length)
    program = TrainProgram(config, mesh, length)
    tok_graph, tok_state = nnx.split(vae.quantize)  # the step reads token maps: it needs the quantizer only
    params = jax.tree.map(lambda a, x: jnp.asarray(x, a.dtype), program.abstract_state["params"], nnx.state(var))
    state = jax.device_put({**counters(), "params": params, "opt": program.tx.init(params)}, program.state_sharding)

    def official(params) -> dict[str, np.ndarray]:
        model = abstract_model(VAR, var_cfg)
        nnx.update(model, jax.tree.map(lambda x: np.array(x, copy=True), params))
        return var_to_official(model)

    per_step: dict[str, list] = {k: [] for k in ("loss", "grad_norm", "lr", "wd", "prog_si", "prog_wp", "nonfinite")}
    weights, tokens = {}, []
    img_to_idx = nnx.jit(VQVAE.img_to_idx)
    for s in range(steps):
        if f"train/tokens/{s}" not in fx.files or f"train/label/{s}" not in fx.files:
            break
        batch_s = {"label": np.asarray(fx[f"train/label/{s}"], np.int32),
                   "tokens": np.asarray(fx[f"train/tokens/{s}"], np.int32)}
        num_scales = progressive.num_scales_at(s)
        weight = np.float32(progressive.newest_weight(s))
        state, metrics = program.step(tok_graph, tok_state, batch_s, num_scales)(state, batch_s, tok_state, weight)
        for k in ("loss", "grad_norm", "lr", "wd", "nonfinite"):
            per_step[k].append(float(metrics[k]))
        per_step["prog_si"].append(-1 if num_scales is None else num_scales - 1)
        per_step["prog_wp"].append(float(weight))
        if s == 0:  # converted (copied) now: the next step donates these buffers
            weights["after_step0"] = official(state["params"])
        if f"train/img/{s}" in fx.files:
            tokens.append(np.concatenate([np.asarray(t) for t in img_to_idx(vae, nhwc(fx[f"train/img/{s}"]))], 1))
    weights["final"] = official(state["params"])
    return Trajectory({k: np.asarray(v, np.float64) for k, v in per_step.items()}, weights, set(var_buffers(var_cfg)),
                      _no_decay_names(var, optim.decay_mask(program.abstract_state["params"])), tokens, steps,
                      len(var_cfg.patch_nums), float(config.train.grad_clip) > 0)


def compare(fx, ours: Trajectory) -> list[Check]:
    """Every check of a training fixture against a replay of it.  A reference the fixture lacks is
    ``missing``."""
    has = set(fx.files)
    steps, done = ours.steps, len(ours.per_step["loss"])
    checks: list[Check] = []

    def add(name: str, error, tol: float, note: str = "") -> None:
        checks.append(Check(name, None if error is None else float(error), tol, note))

    def per_step(key: str, tol: float, compared=None) -> None:
        name = f"train/{key}"
        if name not in has:
            return add(name, None, tol, "not in the fixture")
        ref, mine = np.asarray(fx[name], np.float64), ours.per_step[key]
        if done < steps:
            return add(name, float("inf"), tol, f"only {done} of {steps} steps have tokens and labels")
        if mine.shape != ref.shape:
            return add(name, float("inf"), tol, f"{ref.shape[0] if ref.ndim else 0} values for {steps} steps")
        compared = np.ones(ref.shape, bool) if compared is None else compared
        if not compared.any():
            return add(name, 0.0, tol, "nothing to compare")
        err, at = _relative(mine[compared], ref[compared])
        add(name, err, tol, f"worst at step {int(np.flatnonzero(compared)[at])}" if np.isfinite(err) else "not finite")

    for key in ("lr", "wd"):
        per_step(key, SCHEDULE_TOL)
    # the stage: -1 and the last scale both mean the whole sequence (the official step maps one to the other)
    whole = lambda si: np.where(np.asarray(si) == ours.num_scales - 1, -1, np.asarray(si))  # noqa: E731
    if "train/prog_si" in has and done == steps and np.shape(fx["train/prog_si"]) == (steps,):
        add("train/prog_si", np.sum(whole(ours.per_step["prog_si"]) != whole(fx["train/prog_si"])), 0.0,
            "steps with another stage")
        # the warm-up factor weighs nothing in a progressive run's whole-sequence stage: not compared there
        progressive = np.any(whole(fx["train/prog_si"]) >= 0)
        per_step("prog_wp", SCHEDULE_TOL, (whole(fx["train/prog_si"]) >= 0) | (not progressive))
    else:
        add("train/prog_si", None if "train/prog_si" not in has else float("inf"), 0.0, "stages not comparable")
        per_step("prog_wp", SCHEDULE_TOL)
    per_step("loss", STEP_TOL)
    # with clipping off the official step returns no norm: values it could not record are not compared
    grad_norm = np.asarray(fx["train/grad_norm"], np.float64) if "train/grad_norm" in has else None
    per_step("grad_norm", STEP_TOL, None if ours.grad_norm_recorded or grad_norm is None else ~np.isnan(grad_norm))
    add("nonfinite_steps", np.sum(ours.per_step["nonfinite"]), 0.0, "steps the NaN guard skipped")

    if "train/no_decay" in has:
        diff = sorted(ours.no_decay ^ set(json.loads(str(fx["train/no_decay"]))))
        add("train/no_decay", len(diff), 0.0, ("differ: " + ", ".join(diff[:6])) if diff else "")
    else:
        add("train/no_decay", None, 0.0, "not in the fixture")
    ref_tokens = [fx[f"train/tokens/{s}"] for s in range(steps) if f"train/tokens/{s}" in has]
    if len(ours.tokens) == len(ref_tokens) == steps:
        add("train/tokens", sum(int(np.sum(a != b)) if a.shape == b.shape else b.size
                                for a, b in zip(ours.tokens, ref_tokens)), 0.0, "token indices that differ")
    else:
        add("train/tokens", None, 0.0, "images or token maps of some steps not in the fixture")

    init = {k[len("var/"):]: fx[k] for k in has if k.startswith("var/")}
    for phase in ("after_step0", "final"):
        name = f"train/{phase}"
        ref = {k[len(name) + 1:]: fx[k] for k in has if k.startswith(f"{name}/")}
        if not ref:
            add(name, None, PARAM_TOL, "not in the fixture")
            continue
        add(name, *_weight_error(ours.weights[phase], ref, init, ours.buffers))
    return checks


def _weight_error(ours: dict, ref: dict, init: dict, buffers: set[str]) -> tuple[float, float, str]:
    """(error, tolerance, note) of the worst parameter tensor: ‖ours − ref‖ / ‖ref − init‖ against
    PARAM_TOL + ‖ulp(ref)‖ / ‖ref − init‖."""
    params = (set(ours) | set(ref)) - buffers
    ratios, tols = {}, {}
    for k in params:
        if k not in ours or k not in ref or k not in init or ours[k].shape != ref[k].shape:
            ratios[k], tols[k] = float("inf"), PARAM_TOL  # a tensor one side lacks
            continue
        r = np.asarray(ref[k], np.float64)
        moved = np.linalg.norm(r - init[k])
        off = np.linalg.norm(np.asarray(ours[k], np.float64) - r)
        ulp = np.linalg.norm(np.spacing(np.abs(np.asarray(ref[k], np.float32))).astype(np.float64))
        ratios[k] = off / moved if moved > 0 else (0.0 if off == 0 else float("inf"))
        tols[k] = PARAM_TOL + (ulp / moved if moved > 0 else 0.0)
    worst = max(params, key=lambda k: ratios[k] / tols[k])
    return ratios[worst], tols[worst], f"{len(params)} tensors, worst {worst}"


def replay_checks(fx, train_overrides: Mapping[str, object] | None = None) -> list[Check]:
    """:func:`compare` of :func:`replay`: what ``python -m var_jax.parity`` prints for a training fixture."""
    return compare(fx, replay(fx, train_overrides))


def format_report(checks: list[Check]) -> str:
    return parity_report(checks, f"lr, wd within {SCHEDULE_TOL:g} and loss, grad_norm within {STEP_TOL:g} relative; "
                                 f"parameters within {PARAM_TOL:g} of their movement + 1 ulp; stages, tokens and the "
                                 "no-decay set equal", error="error")
