"""The multi-scale residual quantizer of VAR (the official ``VectorQuantizer2``), on NHWC maps.

One codebook is shared by all scales.  Scale k quantizes the area-downsampled residual
``f - f̂_{k-1}`` at its own grid, brings the chosen codes back to the full latent grid (bicubic),
refines them with a Phi convolution and adds them to ``f̂``.  Token maps are flattened row-major,
the order of the official code.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.ops.resample import resize

PatchNum = int | tuple[int, int]
_HIGHEST = jax.lax.Precision.HIGHEST


def patch_hw(pn: PatchNum) -> tuple[int, int]:
    return (pn, pn) if isinstance(pn, int) else (int(pn[0]), int(pn[1]))


def phi_ticks(num_phis: int) -> np.ndarray:
    """Positions in [0, 1] of the Phi convolutions, exactly as the official code spaces them."""
    k = num_phis
    if k == 4:
        return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
    return np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def phi_index(si: int, num_scales: int, num_phis: int) -> int:
    """Which Phi scale ``si`` of ``num_scales`` uses: the nearest tick to si/(SN-1).

    NumPy's argmin (first minimum) over float64 ticks decides exact ties the way the official code
    does; for SN=10, K=4 this gives [0,0,1,1,1,2,2,3,3,3].
    """
    if num_phis == 1:
        return 0
    ratio = si / (num_scales - 1)
    return int(np.argmin(np.abs(phi_ticks(num_phis) - ratio)))


class PhiBank(nnx.Module):
    """The Phi convolutions: ``(1 - r)·h + r·conv(h)`` with r = |quant_resi|.

    share_quant_resi = 0: one conv per scale (``default_qresi_counts`` or SN of them);
    1: one shared conv; K > 1: K convs, each scale taking the one at the nearest tick.
    A ratio of (almost) zero makes every Phi the identity, with no parameters, as the official code.
    """

    def __init__(self, channels: int, quant_resi: float, share_quant_resi: int, num_scales: int,
                 default_qresi_counts: int, *, dtype, rngs: nnx.Rngs):
        self.ratio = abs(quant_resi)
        if share_quant_resi == 0:
            count = default_qresi_counts or num_scales
        else:
            count = share_quant_resi
        self.num_phis = count
        if self.ratio > 1e-6:
            self.convs = nnx.List([nnx.Conv(channels, channels, (3, 3), padding=1, dtype=dtype, rngs=rngs)
                                   for _ in range(count)])
        else:
            self.convs = nnx.List([])

    def __call__(self, h: jax.Array, si: int, num_scales: int) -> jax.Array:
        if not self.convs:
            return h
        conv = self.convs[phi_index(si, num_scales, self.num_phis)]
        return h * (1 - self.ratio) + conv(h) * self.ratio


class UsageStat(nnx.Variable):
    """Per-scale EMA of codebook hits (the official ``ema_vocab_hit_SV``); not a parameter."""


def nearest_code(z: jax.Array, codebook: jax.Array, using_znorm: bool) -> jax.Array:
    """Index of the nearest code for each row of ``z`` (N, C): squared L2, or cosine with znorm."""
    codebook = jax.lax.stop_gradient(codebook)
    if using_znorm:
        z = _l2_normalize(z)
        return jnp.argmax(jnp.matmul(z, _l2_normalize(codebook).T, precision=_HIGHEST), axis=1)
    dist = (jnp.sum(z * z, axis=1, keepdims=True) + jnp.sum(codebook * codebook, axis=1)
            - 2 * jnp.matmul(z, codebook.T, precision=_HIGHEST))
    return jnp.argmin(dist, axis=1)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``F.normalize``: x / max(‖x‖, eps) over the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MultiScaleQuantizer(nnx.Module):
    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence[PatchNum], *,
                 beta: float = 0.25, using_znorm: bool = False, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.vocab_size = vocab_size
        self.channels = channels
        self.patch_nums = tuple(patch_nums)
        self.beta = beta
        self.using_znorm = using_znorm
        init = jax.nn.initializers.uniform(2.0 / vocab_size)
        self.embedding = nnx.Embed(
            vocab_size, channels,
            embedding_init=lambda k, s, d: init(k, s, d) - 1.0 / vocab_size, rngs=rngs)
        self.quant_resi = PhiBank(channels, quant_resi, share_quant_resi, len(self.patch_nums),
                                  default_qresi_counts, dtype=dtype, rngs=rngs)
        self.ema_vocab_hit_SV = UsageStat(jnp.zeros((len(self.patch_nums), vocab_size), jnp.float32))
        self.record_hit = UsageStat(jnp.zeros((), jnp.int32))

    # -- shared pieces -------------------------------------------------------------------------
    def _hws(self, patch_nums) -> list[tuple[int, int]]:
        hws = [patch_hw(pn) for pn in (patch_nums or self.patch_nums)]
        if len(hws) < 2:
            raise ValueError(f"a multi-scale quantizer needs at least 2 scales, got patch_nums={patch_nums}")
        return hws

    def embed(self, idx: jax.Array) -> jax.Array:
        return jnp.take(self.embedding.embedding[...], idx, axis=0)

    def lift(self, h: jax.Array, si: int, num_scales: int, full_hw: tuple[int, int]) -> jax.Array:
        """Codes of scale ``si`` (B, h, w, C) → their contribution to f̂ at the full grid."""
        if si != num_scales - 1:
            h = resize(h, full_hw, "bicubic")
        return self.quant_resi(h, si, num_scales)

    def _check_latent(self, f: jax.Array, hws) -> None:
        if tuple(f.shape[1:3]) != hws[-1]:
            raise ValueError(f"the last patch size {hws[-1]} must equal the latent size {tuple(f.shape[1:3])}")

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, f: jax.Array, patch_nums=None, *, to_fhat: bool = False) -> list[jax.Array]:
        """Latent (B, H, W, C) → per-scale indices (B, h·w), or the cumulative f̂ after each scale."""
        hws = self._hws(patch_nums)
        self._check_latent(f, hws)
        B, H, W, C = f.shape
        num_scales = len(hws)
        f = jax.lax.stop_gradient(f.astype(jnp.float32))
        f_rest, f_hat, out = f, jnp.zeros_like(f), []
        codebook = self.embedding.embedding[...]
        for si, (ph, pw) in enumerate(hws):
            z = f_rest if si == num_scales - 1 else resize(f_rest, (ph, pw), "area")
            idx = nearest_code(z.reshape(-1, C), codebook, self.using_znorm).reshape(B, ph * pw)
            h = self.lift(self.embed(idx).reshape(B, ph, pw, C), si, num_scales, (H, W))
            f_hat, f_rest = f_hat + h, f_rest - h
            out.append(f_hat if to_fhat else idx)
        return out

    # -- decoding --------------------------------------------------------------------------------
    def idx_to_fhat(self, idx_list: Sequence[jax.Array], *, last_one: bool = False):
        """Per-scale indices (B, h·w) of square scales → cumulative f̂ after each scale (or the last)."""
        num_scales = len(idx_list)
        sides = [_square_side(idx.shape[1]) for idx in idx_list]
        B, full = idx_list[0].shape[0], (sides[-1], sides[-1])
        f_hat = jnp.zeros((B, *full, self.channels), jnp.float32)
        out = []
        for si, (idx, pn) in enumerate(zip(idx_list, sides)):
            f_hat = f_hat + self.lift(self.embed(idx).reshape(B, pn, pn, self.channels), si, num_scales, full)
            out.append(f_hat)
        return out[-1] if last_one else out

    def idx_to_var_input(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """Teacher-forcing input (B, L - pn₀², C): for each scale after the first, the cumulative f̂
        of the coarser scales, area-downsampled to its grid and flattened."""
        hws = self._hws(None)
        num_scales, full = len(hws), hws[-1]
        B = idx_list[0].shape[0]
        f_hat = jnp.zeros((B, *full, self.channels), jnp.float32)
        pieces = []
        for si in range(num_scales - 1):
            ph, pw = hws[si]
            f_hat, nxt = self.next_input(si, f_hat, self.embed(idx_list[si]).reshape(B, ph, pw, self.channels))
            pieces.append(nxt.reshape(B, -1, self.channels))
        return jnp.concatenate(pieces, axis=1)

    def next_input(self, si: int, f_hat: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One sampling step: add scale ``si``'s codes h (B, h, w, C) to f̂ and return (f̂, the next
        scale's input map); at the last scale the input map is f̂ itself."""
        hws = self._hws(None)
        num_scales = len(hws)
        f_hat = f_hat + self.lift(h, si, num_scales, tuple(f_hat.shape[1:3]))
        if si == num_scales - 1:
            return f_hat, f_hat
        return f_hat, resize(f_hat, hws[si + 1], "area")

    # -- training --------------------------------------------------------------------------------
    def __call__(self, f: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Training forward: (straight-through f̂, mean VQ loss, per-scale code hits (SN, V)).

        Scale k's loss is β·MSE(sg(f̂_k), f) + MSE(f̂_k, sg(f)) on the cumulative f̂_k; the losses are
        averaged over scales.  The returned f̂ has f̂'s value and passes its gradient to f unchanged.
        """
        hws = self._hws(None)
        self._check_latent(f, hws)
        f = f.astype(jnp.float32)
        B, H, W, C = f.shape
        num_scales = len(hws)
        f_sg = jax.lax.stop_gradient(f)
        f_rest, f_hat = f_sg, jnp.zeros_like(f)
        codebook = self.embedding.embedding[...]
        loss, hits = 0.0, []
        for si, (ph, pw) in enumerate(hws):
            z = f_rest if si == num_scales - 1 else resize(f_rest, (ph, pw), "area")
            idx = nearest_code(z.reshape(-1, C), codebook, self.using_znorm)
            hits.append(jnp.bincount(idx, length=self.vocab_size).astype(jnp.float32))
            h = self.lift(self.embed(idx).reshape(B, ph, pw, C), si, num_scales, (H, W))
            f_hat = f_hat + h
            f_rest = f_rest - jax.lax.stop_gradient(h)
            loss = loss + self.beta * jnp.mean((jax.lax.stop_gradient(f_hat) - f) ** 2) \
                + jnp.mean((f_hat - f_sg) ** 2)
        f_hat_st = (jax.lax.stop_gradient(f_hat) - f_sg) + f
        return f_hat_st, loss / num_scales, jnp.stack(hits)


def _square_side(length: int) -> int:
    side = int(round(length ** 0.5))
    if side * side != length:
        raise ValueError(f"a token map of {length} tokens is not square; pass square scales")
    return side
