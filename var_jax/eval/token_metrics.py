"""Teacher-forced token metrics per scale of a trained tokenizer and VAR: the paper's test loss and
token error rate (the sums and their reduction are :mod:`var_jax.objectives`').

For each image the tokenizer gives the ground-truth token maps, the VAR predicts every token from
the coarser scales (one teacher-forced pass) and we count, per scale, the cross-entropy and the
wrong top-1 predictions.  ``L_last``/``Err_last`` are over the last scale's tokens; ``L_avg``/
``Err_avg`` over all tokens of all scales (the official ``Lm``/``Accm``: a plain per-token mean, so
the large scales weigh most).  Errors are in percent.  Labels are used as given: the official
evaluation also drops 10% of labels to the null class, which we do not.
"""
from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.config import check_compatible
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE
from var_jax.objectives import ScaleSums, TokenMetrics, scale_sums


def image_scale_sums(vae: VQVAE, var: VAR, images: jax.Array, labels: jax.Array) -> ScaleSums:
    """:func:`scale_sums` of images (B, H, W, 3) in [-1, 1], tokenized by ``vae``."""
    return scale_sums(var, vae.quantize, vae.img_to_idx(images), labels)


@functools.partial(jax.jit, static_argnames=("graphdefs",))
def _compiled_sums(graphdefs, states, images, labels):
    vae, var = nnx.merge(graphdefs[0], states[0]), nnx.merge(graphdefs[1], states[1])
    return image_scale_sums(vae, var, images, labels)


def evaluate_tokens(vae: VQVAE, var: VAR, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Token metrics over ``(images in [-1, 1] (B, H, W, 3), labels (B,))`` batches; each batch size
    compiles once."""
    check_compatible(vae.cfg, var.cfg)
    (g_vae, s_vae), (g_var, s_var) = nnx.split(vae), nnx.split(var)
    metrics = TokenMetrics(var.cfg.patch_nums)
    for images, labels in batches:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be (B,) for {len(images)} images, got shape {labels.shape}")
        if labels.min() < 0 or labels.max() > var.cfg.num_classes:
            raise ValueError(f"labels must be in 0..{var.cfg.num_classes} ({var.cfg.num_classes} = unconditional), "
                             f"got {labels.min()}..{labels.max()}")
        sums = _compiled_sums((g_vae, g_var), (s_vae, s_var), jnp.asarray(images, jnp.float32),
                              jnp.asarray(labels, jnp.int32))
        metrics.update(sums, len(images))
    return metrics.result()
