"""Held-out evaluation of a tokenizer: PSNR, LPIPS, codebook usage per scale, and the picture of
originals above their reconstructions after each scale (coarse to fine)."""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.data.transforms import to_uint8
from var_jax.image_io import labelled_grid
from var_jax.models.vqvae import VQVAE
from var_jax.objectives import psnr, scale_names
from var_jax.train.lpips import LPIPS


class TokenizerEvaluator:
    """Compiled once per model structure; call with the current models each time."""

    def __init__(self):
        self._batch = jax.jit(self._batch_stats, static_argnums=0)
        self._lpips = jax.jit(self._lpips_sum, static_argnums=0)
        self._pyramid = jax.jit(self._pyramid_images, static_argnums=0)

    @staticmethod
    def _batch_stats(vae_graph, vae_state, images):
        vae = nnx.merge(vae_graph, *vae_state)
        idx = vae.img_to_idx(images)
        recon = vae.idx_to_img(idx)
        hit = jnp.stack([jnp.bincount(i.reshape(-1), length=vae.cfg.vocab_size) > 0 for i in idx])
        return recon, jnp.sum(psnr(recon, images)), hit

    @staticmethod
    def _lpips_sum(lpips_graph, lpips_state, recon, images):
        return jnp.sum(nnx.merge(lpips_graph, lpips_state)(recon, images))

    @staticmethod
    def _pyramid_images(vae_graph, vae_state, images):
        return nnx.merge(vae_graph, *vae_state).img_to_reconstructed(images)

    def evaluate(self, vae: VQVAE, batches: Iterable[jax.Array], lpips: LPIPS | None = None,
                 lpips_images: int = 0) -> dict[str, float]:
        """Means over the held-out batches (each (B, H, W, 3) in [-1, 1]) of the tokens-to-image
        round trip: ``psnr`` (dB, per image), ``lpips`` (over the first ``lpips_images`` images, whole
        batches, when an LPIPS model is given: VGG16 costs far more than a small tokenizer) and
        ``usage/<scale>`` (% of the codebook that some held-out image uses at that scale)."""
        vae_graph, *vae_state = nnx.split(vae, nnx.Param, ...)
        lp_graph, lp_state = nnx.split(lpips) if lpips is not None else (None, None)
        n, n_lp, psnr_sum, lp_sum, hit = 0, 0, 0.0, 0.0, None
        for images in batches:
            recon, p, h = self._batch(vae_graph, tuple(vae_state), images)
            if lpips is not None and n_lp < lpips_images:
                lp_sum += float(self._lpips(lp_graph, lp_state, recon, images))
                n_lp += images.shape[0]
            n += images.shape[0]
            psnr_sum += float(p)
            hit = h if hit is None else hit | h
        if n == 0:
            raise ValueError("the held-out set gave no images to evaluate")
        out = {"psnr": psnr_sum / n}
        if n_lp:
            out["lpips"] = lp_sum / n_lp
        usage = 100.0 * np.asarray(jax.device_get(hit)).mean(axis=1)
        out.update({f"usage/{name}": float(u) for name, u in zip(scale_names(vae.cfg.v_patch_nums), usage)})
        return out

    def pyramid(self, vae: VQVAE, images: jax.Array) -> np.ndarray:
        """A uint8 picture: the originals in the top row, below them their reconstruction from the
        first 1, 2, ..., SN scales."""
        vae_graph, *vae_state = nnx.split(vae, nnx.Param, ...)
        rows = [images] + list(self._pyramid(vae_graph, tuple(vae_state), images))
        rows = [to_uint8(np.asarray(jax.device_get(r))) for r in rows]
        return labelled_grid(rows, ["input"] + scale_names(vae.cfg.v_patch_nums))
