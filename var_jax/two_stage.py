"""VAR's two-stage recipe up to the VAR's training: a tokenizer (given, or trained), then the
training images' token maps written once, so that every VAR trained after reads tokens instead of
running the encoder.  The demo and the scaling sweep both start here; each stage resumes.
"""
from __future__ import annotations

import os
import pathlib
import time

import ml_collections

from var_jax.checkpoint import load_pretrained
from var_jax.config import load_config
from var_jax.data import pipeline
from var_jax.data.tokenized import write_tokens
from var_jax.models.vqvae import VQVAE
from var_jax.train.tokenizer_trainer import train_tokenizer
from var_jax.train.var_trainer import check_config, check_tokenizer

TOKENIZER_RUN, TOKENS = "tokenizer_run", "tokens"


def tokenizer_and_tokens(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, tokenizer_config: str,
                         tokenizer_overrides=(), crops: int = 1,
                         follow=None) -> tuple[VQVAE, dict[str, float]]:
    """The tokenizer and the token maps of a VAR training ``config``, in ``workdir``:

    1. the tokenizer: ``config.tokenizer`` when it is set, else one trained from ``tokenizer_config``
       (with ``tokenizer_overrides``) into WORKDIR/tokenizer_run (kept: a second call reuses it);
    2. ``follow(config, tokenizer_dir)``, when given, e.g. to size the VAR to the tokenizer;
    3. the token maps of the training images (``crops`` random crops each) in WORKDIR/tokens, unless
       ``config.data.tokens`` names some already.

    ``config.tokenizer`` and ``config.data.tokens`` are set to what was used.  Returns the loaded
    tokenizer and the seconds each stage took (``tokenizer_s``, ``tokenize_s``)."""
    workdir = pathlib.Path(workdir)
    timings, tic = {}, time.perf_counter()
    if config.tokenizer:
        tokenizer_dir = pathlib.Path(config.tokenizer)
    else:
        run = workdir / TOKENIZER_RUN
        if not (run / "tokenizer").is_dir():
            train_tokenizer(load_config(tokenizer_config, list(tokenizer_overrides)), run)
        tokenizer_dir = run / "tokenizer"
    if follow is not None:
        follow(config, tokenizer_dir)
    config.tokenizer = str(tokenizer_dir.absolute())
    vae = load_pretrained(tokenizer_dir).vae
    timings["tokenizer_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    if not config.data.tokens:
        tokens = _write_tokens(vae, config, workdir / TOKENS, crops=int(crops), batch=128)
        config.data.tokens = str(pathlib.Path(tokens).absolute())
    timings["tokenize_s"] = time.perf_counter() - tic
    return vae, timings


def tokenize(config: ml_collections.ConfigDict, out: str | os.PathLike, *, crops: int = 1,
             batch: int = 64) -> pathlib.Path:
    """``var-jax tokenize``: the token maps of a VAR config's training images (its data section),
    by its tokenizer (checked to be the config's first), ``crops`` random crops each, into ``out``."""
    vae_cfg, _ = check_config(config)
    tokenizer = check_tokenizer(config, vae_cfg)
    if crops < 1 or batch < 1:
        raise ValueError(f"--crops and --batch must be at least 1, got {crops} and {batch}")
    pipeline.sources(config.data)  # a missing folder fails before the tokenizer loads
    return _write_tokens(load_pretrained(tokenizer).vae, config, out, crops=crops, batch=batch)


def _write_tokens(vae, config, out, *, crops: int, batch: int) -> pathlib.Path:
    train_src, _ = pipeline.sources(config.data)
    return write_tokens(vae, train_src, out, image_size=int(config.img_size), crops=crops, seed=int(config.train.seed),
                        batch_size=batch, hflip=bool(config.data.hflip), num_threads=int(config.data.num_threads),
                        description={"name": config.data.name, "root": config.data.root})
