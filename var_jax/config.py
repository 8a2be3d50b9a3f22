"""Model configurations: the released presets, loading ``configs/*.py`` and command-line overrides.

A configuration is an ``ml_collections.ConfigDict`` with ``img_size``, ``vae`` (the fields of
:class:`VQVAEConfig`) and ``var`` (the fields of :class:`VARConfig`); the files in ``configs/``
each define ``get_config()``.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections

from var_jax.models.var import VARConfig
from var_jax.models.vqvae import VQVAEConfig

# The official patch schedules (--pn): side of each scale's token map.
PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def vqvae_f16(img_size: int = 256) -> ml_collections.ConfigDict:
    """The released tokenizer (``vae_ch160v4096z32.pth``) with the patch schedule of ``img_size``."""
    return ml_collections.ConfigDict(VQVAEConfig(ch=160, v_patch_nums=PATCH_NUMS[img_size]).to_dict())


def released_var(depth: int, init_adaln_gamma: float, img_size: int = 256, shared_aln: bool = False):
    """A released VAR (with its tokenizer) sized as ``build_vae_var`` does: width 64·d, d heads."""
    var = VARConfig.for_depth(depth, patch_nums=PATCH_NUMS[img_size], shared_aln=shared_aln,
                              init_adaln_gamma=init_adaln_gamma)
    return ml_collections.ConfigDict({"img_size": img_size, "vae": vqvae_f16(img_size).to_dict(),
                                      "var": var.to_dict()})


def model_configs(config) -> tuple[VQVAEConfig | None, VARConfig | None]:
    """The tokenizer and transformer configurations of ``config`` (None for a section it lacks),
    checked against each other when it has both."""
    vae = VQVAEConfig.from_dict(dict(config["vae"])) if "vae" in config else None
    var = VARConfig.from_dict(dict(config["var"])) if "var" in config else None
    if vae is not None and var is not None:
        check_compatible(vae, var)
    return vae, var


def check_compatible(vae: VQVAEConfig, var: VARConfig) -> None:
    """A tokenizer and a VAR that can work together, or a clear error."""
    if tuple(var.patch_nums) != tuple(vae.v_patch_nums):
        raise ValueError(f"the VAR's patch_nums {var.patch_nums} differ from the tokenizer's v_patch_nums "
                         f"{vae.v_patch_nums}")
    if (var.vocab_size, var.Cvae) != (vae.vocab_size, vae.z_channels):
        raise ValueError(f"the VAR expects vocab_size={var.vocab_size}, Cvae={var.Cvae} but the tokenizer has "
                         f"vocab_size={vae.vocab_size}, z_channels={vae.z_channels}")


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """A config by name in ``configs/`` (``var_d16``) or by path, with ``key.sub=value`` overrides."""
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no config {name_or_path!r}: give a path to a .py file with get_config() or one "
                                f"of {available_configs()}")
    spec = importlib.util.spec_from_file_location(f"var_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    config = module.get_config()
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Apply ``a.b=value`` (a leading ``--config.`` is accepted); the value is a Python literal or a string."""
    item = item.removeprefix("--").removeprefix("config.")
    if "=" not in item:
        raise ValueError(f"an override looks like key.sub=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        if p not in node:
            raise KeyError(f"unknown config key {key!r}: {p!r} is not one of {sorted(node.keys())}")
        node = node[p]
    if leaf not in node:
        raise KeyError(f"unknown config key {key!r}: {leaf!r} is not one of {sorted(node.keys())}")
    current = node[leaf]
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        value = type(current)(value)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    node[leaf] = value
