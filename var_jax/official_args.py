"""The official trainer's settings (the flags of its ``train.py``) as var-jax's ``train`` config.

A command line of the official trainer ports by passing its flags to :func:`train_settings` (or
``python -m var_jax.official_args --tblr=8e-5 --bs=1024 ...``, which prints the
``--config.train.*`` overrides for ``var-jax train``).  The official defaults and special values
are resolved as its ``arg_util.py`` resolves them: ``wp=0`` means ``ep/50``, ``pgwp=0`` means
``ep/300``, ``twde=0`` means ``twd``, ``tclip<=0`` turns clipping off, ``pg>0`` replaces the
schedule by ``lin{pg}`` (done where the schedule is built, so ``sche`` is kept as given), and
the peak lr is ``tblr·bs/256``.  Iteration counts replace the epoch ones where the run is known
in steps: ``max_it`` for ``ep``, ``wp_it`` for ``wp``, ``pgwp_it`` for ``pgwp``.

Only ``ac=1`` is accepted: var-jax does not accumulate gradients (the mesh splits the whole
batch instead; give the global ``bs``).  ``fp16`` (0: float32, 1: float16 with loss scaling,
2: bfloat16) maps to ``compute_dtype`` float32 or bfloat16 (float16 has no port; bfloat16 needs
no loss scaling).
"""
from __future__ import annotations

import argparse
import sys

# The official defaults (``utils/arg_util.py``) of the flags this module maps.
OFFICIAL_DEFAULTS = {"tblr": 1e-4, "bs": 768, "ep": 250, "wp": 0.0, "wp0": 0.005, "wpe": 0.01, "sche": "lin0",
                     "twd": 0.05, "twde": 0.0, "tclip": 2.0, "ls": 0.0, "pg": 0.0, "pg0": 4, "pgwp": 0.0,
                     "ac": 1, "fp16": 0}
# Given in iterations instead of epochs (the run's own counts): each replaces its epoch flag.
ITERATION_FLAGS = {"max_it": "ep", "wp_it": "wp", "pgwp_it": "pgwp"}


def train_settings(**official) -> dict:
    """``train`` config values of an official run; flags not given take the official defaults.

    >>> train_settings(tblr=8e-5, bs=1024, ep=350, twde=0.08)["wd_end"]
    0.08
    """
    unknown = sorted(set(official) - set(OFFICIAL_DEFAULTS) - set(ITERATION_FLAGS))
    if unknown:
        raise ValueError(f"unknown official training flag(s) {unknown}; this mapping takes "
                         f"{sorted(OFFICIAL_DEFAULTS) + sorted(ITERATION_FLAGS)}")
    for it_flag, ep_flag in ITERATION_FLAGS.items():
        if it_flag in official and ep_flag in official:
            raise ValueError(f"give {it_flag} (iterations) or {ep_flag} (epochs), not both")
    a = {**OFFICIAL_DEFAULTS, **official}
    if int(a["ac"]) != 1:
        raise ValueError(f"ac={a['ac']}: gradient accumulation is not supported; give the global batch as bs "
                         f"(the peak lr tblr·bs/256 is the same) and let the mesh split it")
    if int(a["fp16"]) not in (0, 1, 2):
        raise ValueError(f"fp16 must be 0 (float32), 1 (float16) or 2 (bfloat16), got {a['fp16']}")
    if a["bs"] < 1 or a["tblr"] <= 0:
        raise ValueError(f"bs must be >= 1 and tblr > 0, got bs={a['bs']}, tblr={a['tblr']}")
    out = {
        "batch_size": int(a["bs"]), "tblr": float(a["tblr"]), "lr": 0.0,
        "lr_schedule": str(a["sche"]), "warmup_start": float(a["wp0"]), "end_lr_ratio": float(a["wpe"]),
        "wd": float(a["twd"]), "wd_end": float(a["twde"]) if a["twde"] else -1.0,
        "grad_clip": max(float(a["tclip"]), 0.0), "label_smooth": float(a["ls"]),
        "pg": float(a["pg"]), "pg0": int(a["pg0"]),
        "compute_dtype": "float32" if int(a["fp16"]) == 0 else "bfloat16",
    }
    if "max_it" in a:
        out.update(steps=int(a["max_it"]))
    else:
        out.update(epochs=float(a["ep"]), steps=0)
    # 0 is the official "default" (ep/50, ep/300); ours is any negative value
    if "wp_it" in a:
        out.update(warmup_iters=float(a["wp_it"]), warmup_epochs=-1.0)
    else:
        out.update(warmup_epochs=float(a["wp"]) if a["wp"] else -1.0, warmup_iters=-1.0)
    if "pgwp_it" in a:
        out.update(pgwp_iters=float(a["pgwp_it"]), pgwp=-1.0)
    else:
        out.update(pgwp=float(a["pgwp"]) if a["pgwp"] else -1.0, pgwp_iters=-1.0)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m var_jax.official_args",
                                     description="Print the var-jax train overrides of an official training command "
                                                 "line (its flags as --name=value).")
    for name, default in {**OFFICIAL_DEFAULTS, **{k: None for k in ITERATION_FLAGS}}.items():
        kind = str if name == "sche" else int if name in ("bs", "pg0", "ac", "fp16", "max_it") else float
        parser.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS,
                            help=f"official default {default}" if default is not None else "iterations")
    args, ignored = parser.parse_known_args(argv)
    try:
        settings = train_settings(**vars(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ignored:
        print(f"not training flags of this mapping (set the model and data in the config): {' '.join(ignored)}",
              file=sys.stderr)
    print(" ".join(f"--config.train.{k}={v}" for k, v in settings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
