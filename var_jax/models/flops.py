"""What a VAR costs, from its configuration alone: parameters and FLOPs of training.

FLOPs count the model as written: the block-causal attention is computed densely over the whole
sequence (as the official code does), a multiply-add is 2 FLOPs, and a training step costs 3× the
forward (the backward pass is twice the forward).  Embedding look-ups, norms and activations are
not counted.
"""
from __future__ import annotations

import math

from var_jax.models.var import VARConfig


def forward_flops_per_image(cfg: VARConfig) -> float:
    """FLOPs of one teacher-forced forward pass over one image's whole token sequence."""
    C, L, d, V = cfg.embed_dim, cfg.seq_len, cfg.depth, cfg.vocab_size
    per_token = d * (4 * C * C + 2 * C * cfg.mlp_hidden) + C * V + cfg.Cvae * C  # qkv+proj, mlp; head; word embed
    attention = d * 2 * L * L * C                                          # q·k and weights·v
    conditioning = (1 if cfg.shared_aln else d) * C * 6 * C + C * 2 * C    # AdaLN projections, once per image
    return 2.0 * (L * per_token + attention + conditioning)


def train_flops_per_image(cfg: VARConfig) -> float:
    """Forward + backward FLOPs of one training image: 3 × the forward."""
    return 3.0 * forward_flops_per_image(cfg)


def param_count(cfg: VARConfig) -> int:
    """Number of parameters of the VAR (everything trained: embeddings, blocks, head), from the
    shapes of an abstract model (nothing is allocated)."""
    from flax import nnx

    from var_jax.models.state import abstract_model, flat_state
    from var_jax.models.var import VAR
    return sum(math.prod(v.shape) for v in flat_state(abstract_model(VAR, cfg), nnx.Param).values())
