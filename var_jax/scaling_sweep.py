"""A scaling-law sweep (``var-jax scaling-sweep``): train VARs of several depths on the same token
maps, measure each one's held-out test loss and token error, and fit power laws to them.

    var-jax scaling-sweep --config configs/scaling_digits.py --workdir DIR [--config.key=value ...]

The config is a VAR training config with a ``sweep`` section (see configs/scaling_digits.py):
``depths``, ``width_per_depth``, ``head_dim``, ``steps``, ``crops``, ``tokenizer_config`` and
``tokenizer_overrides``.  The work directory gets

- ``tokenizer_run/`` — the tokenizer, trained from ``sweep.tokenizer_config`` unless ``tokenizer``
  names an existing one;
- ``tokens/`` — the training images' token maps, written once and shared by every model (unless
  ``data.tokens`` names maps written by the same tokenizer already);
- ``d<depth>/`` — each model's training run (resumable, as ``var-jax train``);
- ``results.jsonl`` — one line per model in the format of :mod:`var_jax.eval.scaling` (name,
  params, compute_flops, L_last, L_avg, Err_last, Err_avg, and how it was trained);
- ``scaling.png`` — the fits.

Every stage resumes: a depth already in ``results.jsonl`` is not trained again, and an interrupted
model continues from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import ml_collections

from var_jax.checkpoint import CONFIG_FILE
from var_jax.data import pipeline
from var_jax.eval.scaling import MIN_POINTS, json_lines, scaling_fit
from var_jax.models.flops import param_count, train_flops_per_image
from var_jax.objectives import scale_names
from var_jax.train.var_trainer import VARTrainer, check_config
from var_jax.two_stage import tokenizer_and_tokens

RESULTS_FILE = "results.jsonl"
PLOT_FILE = "scaling.png"
SWEEP_KEYS = ("depths", "width_per_depth", "head_dim", "steps", "crops", "tokenizer_config", "tokenizer_overrides")
# What a results line must share with the config for the sweep to count it as done.
SETTINGS_KEYS = ("depth", "width", "heads", "steps", "batch_size")


class SweepStopped(RuntimeError):
    """A model's training stopped early (a signal); the sweep resumes where it stopped."""


@dataclasses.dataclass(frozen=True)
class ModelSize:
    depth: int
    width: int
    heads: int


def check_sweep(config: ml_collections.ConfigDict) -> list[ModelSize]:
    """The models of the sweep, after checking the ``sweep`` section (costs no compute)."""
    if "sweep" not in config:
        raise ValueError("the config has no 'sweep' section (see configs/scaling_digits.py)")
    s = config.sweep
    missing = [k for k in SWEEP_KEYS if k not in s]
    if missing:
        raise ValueError(f"the sweep section lacks {missing}; it needs {list(SWEEP_KEYS)} "
                         f"(see configs/scaling_digits.py)")
    depths = list(s.depths) if isinstance(s.depths, (list, tuple)) else None
    if not depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths) \
            or len(set(depths)) != len(depths):
        raise ValueError(f"sweep.depths must be distinct positive integers, e.g. (1, 2, 3, 4); got {s.depths!r}")
    if len(depths) < MIN_POINTS:
        raise ValueError(f"a power-law fit needs at least {MIN_POINTS} models: give sweep.depths at least "
                         f"{MIN_POINTS} depths, got {tuple(depths)}")
    for key in ("width_per_depth", "head_dim", "steps", "crops"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"sweep.{key} must be a positive integer, got {s[key]!r}")
    if int(config.train.steps) not in (0, int(s.steps)):
        raise ValueError(f"train.steps={config.train.steps} but every model trains sweep.steps={s.steps} steps: set "
                         f"the steps with --config.sweep.steps=N (leave train.steps at 0)")
    if not isinstance(s.tokenizer_overrides, (list, tuple)) or not all(isinstance(o, str) and "=" in o
                                                                         for o in s.tokenizer_overrides):
        raise ValueError(f"sweep.tokenizer_overrides is a tuple of 'key=value' strings, e.g. ('train.steps=100',); "
                         f"got {s.tokenizer_overrides!r}")
    sizes = []
    for d in sorted(depths):
        width = int(s.width_per_depth) * d
        if width % int(s.head_dim):
            raise ValueError(f"depth {d}: width {width} (= sweep.width_per_depth {s.width_per_depth} × {d}) is not a "
                             f"multiple of sweep.head_dim={s.head_dim}; choose a head_dim that divides "
                             f"width_per_depth")
        sizes.append(ModelSize(d, width, width // int(s.head_dim)))
    return sizes


def model_config(config: ml_collections.ConfigDict, size: ModelSize) -> ml_collections.ConfigDict:
    """The training config of one model of the sweep."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.var.update(depth=size.depth, embed_dim=size.width, num_heads=size.heads)
    c.train.steps = int(config.sweep.steps)
    return c


def follow_tokenizer(config: ml_collections.ConfigDict, tokenizer_dir: pathlib.Path) -> None:
    """Give ``config`` the tokenizer's ``vae`` section and image size, and make its VAR read that
    tokenizer's tokens (vocab_size, Cvae, patch_nums)."""
    path = tokenizer_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer={tokenizer_dir} is not a var-jax model directory (no {CONFIG_FILE}); "
                                f"give the tokenizer/ folder of a `var-jax train-tokenizer` run, or leave tokenizer "
                                f"empty to train one")
    saved = json.loads(path.read_text())
    if "vae" not in saved:
        raise ValueError(f"{tokenizer_dir} holds no tokenizer (its {CONFIG_FILE} has no 'vae')")
    vae = saved["vae"]
    config.vae = vae
    config.img_size = int(saved["img_size"])
    config.var.update(vocab_size=int(vae["vocab_size"]), Cvae=int(vae["z_channels"]),
                      patch_nums=list(vae["v_patch_nums"]))
    config.tokenizer = str(tokenizer_dir.absolute())


def read_done(path: pathlib.Path) -> dict[int, dict]:
    """The results lines already written, by depth."""
    if not path.is_file():
        return {}
    return {int(row["depth"]): row for _, row in json_lines(path) if isinstance(row, dict) and "depth" in row}


def append_result(path: pathlib.Path, row: dict) -> None:
    """Add a line to the results file atomically: an interruption leaves the previous file whole."""
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(old + json.dumps(row) + "\n")
    tmp.replace(path)


def train_one(config: ml_collections.ConfigDict, size: ModelSize, workdir: pathlib.Path, vae) -> dict:
    """Train one model of the sweep (or finish an interrupted one) and measure it on held-out images."""
    c = model_config(config, size)
    tic = time.perf_counter()
    trainer = VARTrainer(c, workdir / f"d{size.depth}", tokenizer=vae)
    trainer.train()
    if trainer.step_count() < int(c.train.steps):
        raise SweepStopped(f"depth {size.depth} stopped at step {trainer.step_count()} of {c.train.steps}; run the "
                           f"same command to resume")
    train_s = time.perf_counter() - tic
    val = trainer.validate()
    images_seen = trainer.step_count() * int(c.train.batch_size)
    patch_nums = trainer.var_cfg.patch_nums
    return {
        "name": f"d{size.depth}", "depth": size.depth, "width": size.width, "heads": size.heads,
        "params": param_count(trainer.var_cfg),
        "compute_flops": train_flops_per_image(trainer.var_cfg) * images_seen,
        # validate() reports the official vL_mean/vL_tail/vacc_*: the same sums as TokenMetrics'
        # L_avg/L_last and 100 − Err_avg/Err_last (var_jax.objectives)
        "L_last": val["L_tail"], "L_avg": val["L_mean"],
        "Err_last": 100.0 - val["acc_tail"], "Err_avg": 100.0 - val["acc_mean"],
        "L_per_scale": {name: val[f"L_per_scale/{name}"] for name in scale_names(patch_nums)},
        "steps": trainer.step_count(), "batch_size": int(c.train.batch_size), "images_seen": images_seen,
        "heldout_images": int(c.eval.num_images), "train_s": round(train_s, 1),
    }


def run_sweep(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Run (or finish) the sweep in ``workdir``; returns :func:`scaling_fit`'s result plus
    ``trained`` (the depths trained by this call) and ``results`` (the results file)."""
    sizes = check_sweep(config)  # a bad sweep fails before the tokenizer trains
    config = ml_collections.ConfigDict(config.to_dict())  # the caller's config stays as it was
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / RESULTS_FILE
    done = read_done(results)
    for size in sizes:  # a line written with other settings is not this sweep's model
        row = done.get(size.depth)
        want = {"depth": size.depth, "width": size.width, "heads": size.heads, "steps": int(config.sweep.steps),
                "batch_size": int(config.train.batch_size)}
        if row is not None and any(row.get(k) != want[k] for k in SETTINGS_KEYS):
            have = {k: row.get(k) for k in SETTINGS_KEYS}
            raise ValueError(f"{results} has depth {size.depth} trained as {have}, but the config asks for {want}; "
                             f"use another --workdir (or delete that line to train it again)")
    todo = [s for s in sizes if s.depth not in done]
    trained = []
    if todo:
        def follow_and_check(config, tokenizer_dir):  # found now rather than after the first model trains
            follow_tokenizer(config, tokenizer_dir)
            check_config(model_config(config, todo[0]))
            heldout = pipeline.sources(config.data)[1]
            if int(config.eval.num_images) > len(heldout):
                raise ValueError(f"eval.num_images={config.eval.num_images} but the held-out set has {len(heldout)} "
                                 f"images; set --config.eval.num_images to at most {len(heldout)} (a multiple of "
                                 f"eval.batch_size={config.eval.batch_size})")
        vae, _ = tokenizer_and_tokens(config, workdir, tokenizer_config=config.sweep.tokenizer_config,
                                      tokenizer_overrides=config.sweep.tokenizer_overrides,
                                      crops=int(config.sweep.crops), follow=follow_and_check)
        for size in todo:
            print(f"scaling sweep: depth {size.depth} (width {size.width}, {size.heads} heads), "
                  f"{config.sweep.steps} steps")
            row = train_one(config, size, workdir, vae)
            append_result(results, row)
            trained.append(size.depth)
            print(f"scaling sweep: depth {size.depth}: " + ", ".join(
                f"{k} {row[k]:.4g}" for k in ("params", "compute_flops", "L_last", "L_avg", "Err_last", "Err_avg")))
    fit = scaling_fit(results, workdir / PLOT_FILE)
    return {**fit, "trained": trained, "results": str(results)}
