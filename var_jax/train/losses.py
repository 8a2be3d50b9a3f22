"""Loss terms of tokenizer training (VQGAN's recipe around VAR's multi-scale VQ loss).

The VQ loss itself (β·commitment + codebook, straight-through) is computed by
``MultiScaleQuantizer.__call__``; these are the terms around it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ADAPTIVE_WEIGHT_MAX = 1e4
_ADAPTIVE_EPS = 1e-4


def pixel_loss(recon: jax.Array, target: jax.Array, l1_weight: float, l2_weight: float) -> jax.Array:
    """l1_weight·mean|recon − target| + l2_weight·mean (recon − target)²."""
    diff = recon.astype(jnp.float32) - target.astype(jnp.float32)
    return l1_weight * jnp.mean(jnp.abs(diff)) + l2_weight * jnp.mean(diff * diff)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss ½·(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_loss(logits_fake: jax.Array) -> jax.Array:
    """The generator's adversarial loss −mean D(x̂)."""
    return -jnp.mean(logits_fake)


def adaptive_weight(nll_grad: jax.Array, gan_grad: jax.Array) -> jax.Array:
    """VQGAN's balance of the adversarial term: ‖∇_W L_rec‖ / (‖∇_W L_G‖ + 1e-4), clipped to
    [0, 1e4] and held constant (no gradient), with W the decoder's last layer."""
    w = jnp.linalg.norm(nll_grad.astype(jnp.float32)) / (jnp.linalg.norm(gan_grad.astype(jnp.float32)) + _ADAPTIVE_EPS)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, ADAPTIVE_WEIGHT_MAX))
