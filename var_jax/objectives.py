"""The training objectives and their per-scale metrics: what both trainers minimise and what
evaluation measures, written once.

VAR: per-token cross-entropy (with the official label smoothing), the official loss weights
(a plain mean over all tokens; progressive training weights the newest scale), the training
metrics of a batch, and per-scale sums for held-out evaluation (the paper's test loss and token
error).  Tokenizer: VQGAN's loss terms around the quantizer's own VQ loss, and PSNR.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from var_jax.models.quant import PatchNum, patch_hw
from var_jax.models.var import VARConfig

ADAPTIVE_WEIGHT_MAX = 1e4
_ADAPTIVE_EPS = 1e-4


# -- scales ------------------------------------------------------------------------------------------
def scale_names(patch_nums: Sequence[PatchNum]) -> list[str]:
    """'1x1', '2x2', ...: how logs, results and pictures name the scales."""
    return [f"{h}x{w}" for h, w in map(patch_hw, patch_nums)]


def split_scales(tokens: jax.Array, patch_nums: Sequence[int]) -> list[jax.Array]:
    """(B, L) token sequence → per-scale maps (B, pn²)."""
    out, begin = [], 0
    for pn in patch_nums:
        out.append(tokens[:, begin:begin + pn * pn])
        begin += pn * pn
    return out


def per_scale_sum(values: jax.Array, cfg: VARConfig) -> jax.Array:
    """(B, L') per-token values → (S',) their sums per scale, for the first S' scales that the L'
    tokens cover (all of them, or a progressive prefix)."""
    levels = cfg.level_ids()[: values.shape[1]]
    return jax.ops.segment_sum(values.sum(axis=0), jnp.asarray(levels), num_segments=int(levels[-1]) + 1)


# -- the VAR objective -------------------------------------------------------------------------------
def cross_entropy(logits: jax.Array, target: jax.Array, label_smooth: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-token (smoothed cross-entropy, plain cross-entropy), each (B, L), in float32.

    Smoothing as ``torch.nn.CrossEntropyLoss(label_smoothing=ls)``: (1 - ls)·CE(target) + ls·mean over
    classes of −log p."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    ce = lse - jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    if label_smooth == 0:
        return ce, ce
    uniform = lse - jnp.mean(logits, axis=-1)
    return (1 - label_smooth) * ce + label_smooth * uniform, ce


def loss_weights(cfg: VARConfig, num_scales: int | None, newest_weight: jax.Array | float) -> jax.Array:
    """(L',) weights of the official loss: 1/L for every token of the (possibly truncated) sequence,
    the newest scale's multiplied by ``newest_weight`` while training progressively."""
    full = cfg.seq_len
    if num_scales is None:
        return jnp.full((full,), 1.0 / full, jnp.float32)
    begin, end = cfg.begin_ends()[num_scales - 1]
    w = jnp.full((end,), 1.0 / full, jnp.float32)
    return w.at[begin:end].multiply(jnp.asarray(newest_weight, jnp.float32))


def token_metrics(logits: jax.Array, target: jax.Array, ce: jax.Array, cfg: VARConfig) -> dict[str, jax.Array]:
    """The official training metrics of one batch: L_mean / acc_mean over all tokens present,
    L_tail / acc_tail over the last scale (only when the sequence is whole), per-scale L and acc,
    and vocab_usage (% of the codebook predicted more often than 0.001/V of the time). Accuracies in %."""
    predicted = jnp.argmax(logits, axis=-1)
    correct = (predicted == target).astype(jnp.float32)
    counts = jnp.asarray([pn * pn for pn in cfg.patch_nums], jnp.float32)
    loss_sums, correct_sums = per_scale_sum(ce, cfg), per_scale_sum(correct, cfg)
    present = loss_sums.shape[0]
    tokens = target.shape[0] * counts[:present]
    out = {"L_mean": jnp.mean(ce), "acc_mean": 100 * jnp.mean(correct)}
    for k, name in enumerate(scale_names(cfg.patch_nums[:present])):
        out[f"L_per_scale/{name}"] = loss_sums[k] / tokens[k]
        out[f"acc_per_scale/{name}"] = 100 * correct_sums[k] / tokens[k]
    if present == len(cfg.patch_nums):
        out["L_tail"], out["acc_tail"] = loss_sums[-1] / tokens[-1], 100 * correct_sums[-1] / tokens[-1]
    V = logits.shape[-1]
    hits = jnp.bincount(predicted.reshape(-1), length=V)
    out["vocab_usage"] = 100 * jnp.mean((hits / hits.sum() > 0.001 / V).astype(jnp.float32))
    return out


class ScaleSums(NamedTuple):
    loss: jax.Array    # (SN,) summed cross-entropy of each scale's tokens
    errors: jax.Array  # (SN,) number of wrong top-1 predictions per scale


def scale_sums(var, quantize, tokens: Sequence[jax.Array], labels: jax.Array) -> ScaleSums:
    """Teacher-forced sums over a batch (no label dropout); ``tokens`` per scale (B, pn²), ``labels``
    (B,).  Pure: jit it, or call it inside a compiled validation step."""
    logits = var(labels, quantize.idx_to_var_input(tokens))                   # (B, L, V)
    target = jnp.concatenate([t.astype(jnp.int32) for t in tokens], axis=1)  # (B, L)
    _, ce = cross_entropy(logits, target)
    wrong = (jnp.argmax(logits, axis=-1) != target).astype(jnp.float32)
    return ScaleSums(per_scale_sum(ce, var.cfg), per_scale_sum(wrong, var.cfg))


class TokenMetrics:
    """Accumulates :class:`ScaleSums` over batches; ``result()`` gives the test loss and token error.

    ``L_last``/``Err_last`` are over the last scale's tokens; ``L_avg``/``Err_avg`` over all tokens of
    all scales (the official ``Lm``/``Accm``: a plain per-token mean, so the large scales weigh
    most).  Errors are in percent."""

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


# -- the tokenizer objective (VQGAN's terms around the quantizer's VQ loss) ------------------------
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


def psnr(recon: jax.Array, target: jax.Array) -> jax.Array:
    """Per-image PSNR in dB (B,) of images in [-1, 1] (peak-to-peak 2, i.e. 255 on the uint8 scale)."""
    mse = jnp.mean((recon.astype(jnp.float32) - target.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))

