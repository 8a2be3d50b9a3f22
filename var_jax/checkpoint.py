"""Pretrained model directories: ``config.json`` plus one Orbax checkpoint per model.

``save_pretrained(DIR, vae=..., var=...)`` writes ``DIR`` atomically (into a temporary sibling that
is renamed when complete), and refuses to overwrite an existing directory.
``load_pretrained(DIR)`` rebuilds the models from the saved configuration and restores them.
``from_official`` and ``to_official`` go between such a directory and the official ``.pth`` files.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from var_jax.models.state import abstract_model, assign_flat_state, flat_state, path_str
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE, VQVAEConfig

CONFIG_FILE = "config.json"
_MODELS = {"vae": (VQVAE, VQVAEConfig), "var": (VAR, VARConfig)}


class Pretrained(NamedTuple):
    vae: VQVAE | None
    var: VAR | None
    config: dict


def save_pretrained(directory: str | os.PathLike, *, vae: VQVAE | None = None, var: VAR | None = None,
                    extra: dict | None = None) -> pathlib.Path:
    """Write the models and their configurations to a new directory."""
    target = pathlib.Path(directory).absolute()
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} already exists and is not empty; choose a new directory (nothing was written)")
    models = {name: m for name, m in (("vae", vae), ("var", var)) if m is not None}
    if not models:
        raise ValueError("nothing to save: pass vae=, var= or both")
    config = {name: m.cfg.to_dict() for name, m in models.items()}
    if vae is not None:
        config["img_size"] = vae.cfg.image_size()
    config.update(extra or {})
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        with ocp.StandardCheckpointer() as ckpt:
            for name, model in models.items():  # one at a time: the writer's buffers hold one model
                ckpt.save(tmp / name, {path_str(p): v for p, v in flat_state(model).items()})
                ckpt.wait_until_finished()
        if target.exists():
            target.rmdir()
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_pretrained(directory: str | os.PathLike, *, dtype: str | None = None) -> Pretrained:
    """Load a directory written by :func:`save_pretrained` (or ``var-jax convert``).

    ``dtype`` sets the compute dtype (e.g. ``bfloat16``); parameters stay float32.
    """
    root = pathlib.Path(directory).absolute()
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{root} is not a var-jax model directory: it has no {CONFIG_FILE} "
                                f"(make one with `var-jax convert` or save_pretrained)")
    config = json.loads(config_path.read_text())
    loaded = {}
    with ocp.StandardCheckpointer() as ckpt:
        for name, (cls, cfg_cls) in _MODELS.items():
            if name not in config:
                loaded[name] = None
                continue
            cfg_dict = dict(config[name], **({"dtype": dtype} if dtype else {}))
            model = abstract_model(cls, cfg_cls.from_dict(cfg_dict))
            target = {path_str(p): jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in flat_state(model).items()}
            try:
                restored = ckpt.restore(root / name, target)
            except (ValueError, KeyError, FileNotFoundError) as e:
                raise ValueError(f"the {name} checkpoint in {root} does not match its {CONFIG_FILE}: {e}") from e
            # Orbax may restore an array at its stored shape rather than the target's: compare.
            wrong = [f"{k} {tuple(v.shape)} (config wants {tuple(target[k].shape)})"
                     for k, v in restored.items() if tuple(v.shape) != tuple(target[k].shape)]
            if wrong:
                raise ValueError(f"the {name} checkpoint in {root} does not match its {CONFIG_FILE}: "
                                 f"{len(wrong)} array(s) differ in shape: {'; '.join(wrong[:5])}")
            by_str = {path_str(p): p for p in flat_state(model)}
            assign_flat_state(model, {by_str[k]: np.asarray(v) for k, v in restored.items()})
            loaded[name] = model
    return Pretrained(loaded["vae"], loaded["var"], config)


def from_official(out: str | os.PathLike, *, vae: str | None = None, var: str | None = None, config: str | None = None,
                  overrides=(), img_size: int = 256) -> pathlib.Path:
    """A model directory ``out`` from official ``.pth`` files (``vae``, ``var`` or both); the
    configuration is read off the state dicts unless ``config`` (a config name or path, with
    ``overrides``) is given; a tokenizer alone gets the patch schedule of ``img_size``."""
    from var_jax import convert
    from var_jax.config import load_config, model_configs
    if not (vae or var):
        raise ValueError("give --vae FILE.pth, --var FILE.pth or both (or --to-official --ckpt DIR)")
    for path in (vae, var):
        if path and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    var_sd = convert.read_pth(var, "var_wo_ddp") if var else None
    vae_sd = convert.read_pth(vae, "vae_local") if vae else None
    vae_cfg = var_cfg = None
    if config:
        vae_cfg, var_cfg = model_configs(load_config(config, overrides))
        for flag, sd, cfg, section in (("--vae", vae_sd, vae_cfg, "vae"), ("--var", var_sd, var_cfg, "var")):
            if sd is not None and cfg is None:
                raise ValueError(f"{flag} was given but the config {config} has no '{section}' section")
    vae_model, var_model = convert.models_from_official(vae_sd, var_sd, vae_cfg=vae_cfg, var_cfg=var_cfg,
                                                        img_size=img_size)
    del vae_sd, var_sd  # unmaps the file pages the models do not share (lower peak memory while saving)
    target = save_pretrained(out, vae=vae_model, var=var_model)
    print(f"wrote {target} (load it with var_jax.load_pretrained({str(target)!r}))")
    return target


def to_official(ckpt: str | os.PathLike, out: str | os.PathLike) -> list[pathlib.Path]:
    """``vae.pth`` and/or ``var.pth`` in the folder ``out`` from the model directory ``ckpt`` (official
    state dicts; an existing file is never overwritten)."""
    from var_jax import convert
    models = load_pretrained(ckpt)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model, export in (("vae", models.vae, convert.vae_to_official),
                                ("var", models.var, convert.var_to_official)):
        if model is not None:
            path = out / f"{name}.pth"
            if path.exists():
                raise FileExistsError(f"{path} exists; choose another --out (nothing was overwritten)")
            convert.write_pth(export(model), str(path))
            print(f"wrote {path}")
            written.append(path)
    return written
