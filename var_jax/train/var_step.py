"""One VAR training step as a pure function: tokens → teacher-forced logits → per-token
cross-entropy → one clipped AdamW update, plus the official training metrics.

The official loss (``trainer.py``) is a plain mean over all L tokens (weights 1/L, no per-scale
reweighting), with optional label smoothing.  Progressive training truncates the sequence to the
first ``stage + 1`` scales, keeps the weights at 1/L and multiplies the newest scale's by the
stage warm-up factor.  A step whose loss or gradient is not finite changes nothing (parameters
and optimizer state stay as they were) and is counted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from var_jax.data.transforms import to_model_range
from var_jax.models.var import VARConfig
from var_jax.objectives import ScaleSums, cross_entropy, loss_weights, scale_sums, split_scales, token_metrics
from var_jax.parallel import Layout


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What the compiled step depends on statically."""
    label_smooth: float = 0.0
    num_scales: int | None = None  # progressive training: teacher-force only the first scales (None: all)
    seed: int = 0                  # the per-step randomness is fold_in(key(seed), step)
    layout: Layout | None = None   # the mesh: the residual stream is kept split by batch across blocks


def teacher_forcing(quantize, tokens: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(targets (B, L) int32, teacher-forcing input (B, L - pn₀², Cvae)) of per-scale token maps."""
    tokens = [t.astype(jnp.int32) for t in tokens]
    return jnp.concatenate(tokens, axis=1), jax.lax.stop_gradient(quantize.idx_to_var_input(tokens))


def batch_tokens(batch: dict, tokenizer, patch_nums: Sequence[int]) -> list[jax.Array]:
    """Per-scale token maps of a batch: computed by the frozen tokenizer from ``image`` (uint8), or
    read from ``tokens`` (B, L) (the pre-tokenized path; ``tokenizer`` may then be the quantizer)."""
    if "tokens" in batch:
        return split_scales(batch["tokens"].astype(jnp.int32), patch_nums)
    images = to_model_range(batch["image"])
    return [jax.lax.stop_gradient(t) for t in tokenizer.img_to_idx(images)]


def make_train_step(var_graph, tokenizer_graph, tx: optax.GradientTransformation, cfg: VARConfig,
                    settings: StepSettings, lr: Callable, wd: Callable) -> Callable:
    """``step(state, batch, tokenizer_state, newest_weight) -> (state, metrics)``.

    ``state``: {"step", "params", "opt", "skipped", "bad_run"}; ``batch``: {"label", "image" | "tokens"};
    ``tokenizer_state``: the frozen tokenizer's (or only its quantizer's) variables; ``newest_weight``:
    the progressive warm-up factor of the newest scale (ignored when the sequence is whole).
    """
    layout = settings.layout
    residual = None if layout is None else (lambda h: layout.constrain(h, ("batch", "seq", None)))

    def step(state: dict, batch: dict, tokenizer_state, newest_weight) -> tuple[dict, dict[str, Any]]:
        tokenizer = nnx.merge(tokenizer_graph, tokenizer_state)
        quantize = getattr(tokenizer, "quantize", tokenizer)
        target, x_tokens = teacher_forcing(quantize, batch_tokens(batch, tokenizer, cfg.patch_nums))
        if settings.num_scales is not None:  # progressive: the first scales' targets and inputs only
            end = cfg.begin_ends()[settings.num_scales - 1][1]
            target, x_tokens = target[:, :end], x_tokens[:, :end - cfg.patch_nums[0] ** 2]
        label = batch["label"].astype(jnp.int32)
        key = jax.random.fold_in(jax.random.key(settings.seed), state["step"])
        weights = loss_weights(cfg, settings.num_scales, newest_weight)

        def loss_fn(params):
            var = nnx.merge(var_graph, params)
            logits = var(label, x_tokens, key=key, num_scales=settings.num_scales, constrain=residual)
            smoothed, ce = cross_entropy(logits, target, settings.label_smooth)
            return jnp.mean(jnp.sum(smoothed * weights, axis=-1)), (logits, ce)

        (loss, (logits, ce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        applied = state["step"] - state["skipped"]  # the optimizer's own count: skipped steps do not advance it
        new_state = dict(state, step=state["step"] + 1,
                         params=jax.tree.map(keep, params, state["params"]),
                         opt=jax.tree.map(keep, opt, state["opt"]),
                         skipped=state["skipped"] + (~finite).astype(jnp.int32),
                         bad_run=jnp.where(finite, 0, state["bad_run"] + 1).astype(jnp.int32))
        metrics = token_metrics(jax.lax.stop_gradient(logits), target, ce, cfg)
        metrics.update({"loss": loss, "grad_norm": grad_norm, "lr": lr(applied), "wd": wd(applied),
                        "nonfinite": (~finite).astype(jnp.float32), "bad_run": new_state["bad_run"]})
        return new_state, metrics
    return step


def make_eval_step(var_graph, tokenizer_graph, cfg: VARConfig) -> Callable:
    """``sums(params, batch, tokenizer_state) -> ScaleSums``: the teacher-forced validation sums of
    :mod:`var_jax.objectives` (no label dropout, no drop-path)."""
    def sums(params, batch: dict, tokenizer_state) -> ScaleSums:
        tokenizer = nnx.merge(tokenizer_graph, tokenizer_state)
        quantize = getattr(tokenizer, "quantize", tokenizer)
        tokens = [t.astype(jnp.int32) for t in batch_tokens(batch, tokenizer, cfg.patch_nums)]
        return scale_sums(nnx.merge(var_graph, params), quantize, tokens, batch["label"].astype(jnp.int32))
    return sums
