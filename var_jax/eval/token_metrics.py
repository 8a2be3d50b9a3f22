"""Teacher-forced token metrics per scale: the paper's test loss and token error rate.

For each image the tokenizer gives the ground-truth token maps, the VAR predicts every token from
the coarser scales (one teacher-forced pass) and we count, per scale, the cross-entropy and the
wrong top-1 predictions.  ``L_last``/``Err_last`` are over the last scale's tokens; ``L_avg``/
``Err_avg`` over all tokens of all scales (the official ``Lm``/``Accm``: a plain per-token mean, so
the large scales weigh most).  Errors are in percent.  Labels are used as given: the official
evaluation also drops 10% of labels to the null class, which we do not.
"""
from __future__ import annotations

import functools
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.config import check_compatible
from var_jax.models.quant import MultiScaleQuantizer
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE


class ScaleSums(NamedTuple):
    loss: jax.Array    # (SN,) summed cross-entropy of each scale's tokens
    errors: jax.Array  # (SN,) number of wrong top-1 predictions per scale


def scale_sums(var: VAR, quantize: MultiScaleQuantizer, tokens: Sequence[jax.Array], labels: jax.Array) -> ScaleSums:
    """Sums over a batch; ``tokens`` per scale (B, pn²), ``labels`` (B,).  Pure: jit it, or call it
    inside a compiled validation step."""
    logits = var(labels, quantize.idx_to_var_input(tokens)).astype(jnp.float32)  # (B, L, V)
    target = jnp.concatenate([t.astype(jnp.int32) for t in tokens], axis=1)       # (B, L)
    picked = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - picked
    wrong = (jnp.argmax(logits, axis=-1) != target).astype(jnp.float32)
    levels = jnp.asarray(var.cfg.level_ids())
    num_scales = len(var.cfg.patch_nums)
    per_scale = functools.partial(jax.ops.segment_sum, segment_ids=levels, num_segments=num_scales)
    return ScaleSums(per_scale(ce.sum(axis=0)), per_scale(wrong.sum(axis=0)))


def image_scale_sums(vae: VQVAE, var: VAR, images: jax.Array, labels: jax.Array) -> ScaleSums:
    """:func:`scale_sums` of images (B, H, W, 3) in [-1, 1], tokenized by ``vae``."""
    return scale_sums(var, vae.quantize, vae.img_to_idx(images), labels)


class TokenMetrics:
    """Accumulates :class:`ScaleSums` over batches; ``result()`` gives the metrics."""

    def __init__(self, patch_nums: Sequence[int]):
        self.patch_nums = tuple(patch_nums)
        self.tokens = np.array([pn * pn for pn in self.patch_nums], np.float64)  # per image
        self.loss = np.zeros(len(self.patch_nums))
        self.errors = np.zeros(len(self.patch_nums))
        self.images = 0

    def update(self, sums: ScaleSums, batch_size: int) -> None:
        self.loss += np.asarray(sums.loss, np.float64)
        self.errors += np.asarray(sums.errors, np.float64)
        self.images += int(batch_size)

    def result(self) -> dict:
        if not self.images:
            raise ValueError("no validation images were seen")
        count = self.tokens * self.images
        return {
            "L_last": float(self.loss[-1] / count[-1]),
            "L_avg": float(self.loss.sum() / count.sum()),
            "Err_last": float(100 * self.errors[-1] / count[-1]),
            "Err_avg": float(100 * self.errors.sum() / count.sum()),
            "L_per_scale": (self.loss / count).tolist(),
            "Err_per_scale": (100 * self.errors / count).tolist(),
            "patch_nums": list(self.patch_nums),
            "num_images": self.images,
        }


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
