"""Codebook usage: the official EMA hit statistic, its "usage %" per scale, and re-seeding of
codes that no scale uses.

The statistic lives in the quantizer (``ema_vocab_hit_SV`` (SN, V) and the counter ``record_hit``);
these functions compute its next value from one step's hit histograms.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

USAGE_MARGIN = 0.08   # a code is in use if its EMA hit count is at least 8% of a uniform share
_WARM_STEPS = 100     # counter value below which the EMA is fast (0.9/0.1), then slow (0.99/0.01)


def update_hit_ema(ema_SV: jax.Array, record_hit: jax.Array, hits_SV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The official update, scale by scale: a copy while the counter is 0, then EMA 0.9/0.1 while it is
    below 100, then 0.99/0.01; the counter goes up once per scale (SN times per step)."""
    rows = []
    for si in range(ema_SV.shape[0]):
        old, hit = ema_SV[si], hits_SV[si].astype(ema_SV.dtype)
        rows.append(jnp.where(record_hit == 0, hit,
                              jnp.where(record_hit < _WARM_STEPS, 0.9 * old + 0.1 * hit, 0.99 * old + 0.01 * hit)))
        record_hit = record_hit + 1
    return jnp.stack(rows), record_hit


def usage_threshold(tokens_per_step: int, vocab_size: int) -> float:
    """The EMA hit count a code needs to count as used: 8% of the hits a code would get if every
    latent position of a global batch (B·H·W, the full latent grid) were spread evenly over the codebook."""
    return tokens_per_step / vocab_size * USAGE_MARGIN


def usage_percent(ema_SV: jax.Array, tokens_per_step: int) -> jax.Array:
    """The official "usage %" per scale (SN,): the share of codes whose EMA hit count reaches the threshold."""
    return 100.0 * jnp.mean(ema_SV >= usage_threshold(tokens_per_step, ema_SV.shape[1]), axis=1)


def dead_codes(ema_SV: jax.Array, tokens_per_step: int) -> jax.Array:
    """(V,) bool: codes in use at no scale."""
    return ~jnp.any(ema_SV >= usage_threshold(tokens_per_step, ema_SV.shape[1]), axis=0)


def reseed(codebook: jax.Array, dead: jax.Array, candidates: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace dead codes by distinct vectors drawn from ``candidates`` (N, C) (e.g. the residuals the
    last scale quantizes).  Returns (new codebook, number replaced); with more dead codes than
    candidates, the first N dead codes are replaced."""
    pick = jax.random.permutation(key, candidates.shape[0])
    rank = jnp.cumsum(dead) - 1                       # the k-th dead code takes the k-th drawn candidate
    take = dead & (rank < candidates.shape[0])
    new = candidates[pick[jnp.clip(rank, 0, candidates.shape[0] - 1)]].astype(codebook.dtype)
    return jnp.where(take[:, None], new, codebook), jnp.sum(take)
