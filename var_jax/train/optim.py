"""AdamW with a weight-decay mask, the official learning-rate and weight-decay schedules, and
global-norm gradient clipping, as optax transformations."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Parameters whose path mentions one of these are never decayed (the official rule), nor are
# biases and 1-D parameters (norm scales).
NO_DECAY_NAMES = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                  "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")
SCHEDULES = ("constant", "cosine", "cos", "lin", "lin0", "lin00", "linT (e.g. lin0.8)", "exp")


def decay_mask(params):
    """True for the parameters AdamW decays: matrices and kernels that are not named in NO_DECAY_NAMES."""
    def decays(path, leaf) -> bool:
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey):  # an nnx Variable's ``.value``
            path = path[:-1]
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        # ``endswith``: q_bias and v_bias are biases too (1-D officially; stacked over layers here)
        return (leaf.ndim > 1 and not names[-1].endswith("bias")
                and not any(n in name for name in names for n in NO_DECAY_NAMES))
    return jax.tree_util.tree_map_with_path(decays, params)


def _linear_threshold(kind: str) -> float | None:
    """T of a generic 'linT' schedule ('lin0.8' → 0.8), None for any other name."""
    if kind.startswith("lin") and kind not in ("lin", "lin0", "lin00"):
        try:
            return float(kind[3:])
        except ValueError:
            return None
    return None


def lr_schedule(peak: float, total_steps: int, warmup_steps: int = 0, kind: str = "constant",
                warmup_start: float = 0.005, end_ratio: float = 0.01) -> optax.Schedule:
    """Linear warm-up from ``warmup_start``·peak, then ``kind`` over the remaining steps (the
    official ``lr_wd_annealing``; p = fraction of the post-warm-up steps done, e = ``end_ratio``):
    'constant'; 'cosine' / 'cos': half cosine from the peak to e·peak; 'lin0' (the official
    default): the peak while p < 0.05, then linear down to e·peak at the last step; 'lin': the same
    with 0.15; 'lin00': linear from the start; 'linT' (e.g. 'lin0.8', what progressive training
    uses): linear from the peak to a midpoint at p = T, then linear to e·peak; 'exp': the peak while
    p < 0.15, then exponential down to e·peak."""
    threshold = _linear_threshold(kind)
    if kind not in SCHEDULES and threshold is None:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {SCHEDULES}")
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f"the linear schedule 'linT' needs 0 < T < 1, got {kind!r}")
    if not 0 <= warmup_steps < max(total_steps, 1):
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")

    def after_warmup(done, rest):
        e = end_ratio
        if kind == "constant":
            return jnp.ones_like(done)
        if kind in ("cosine", "cos"):
            return e + (1 - e) * (0.5 + 0.5 * jnp.cos(jnp.pi * done))
        if kind in ("lin", "lin0"):
            hold = 0.15 if kind == "lin" else 0.05
            return jnp.where(done < hold, 1.0, e + (1 - e) * rest / (1 - hold))
        if kind == "lin00":
            return e + (1 - e) * rest
        if kind == "exp":
            hold = 0.15
            return jnp.where(done < hold, 1.0, jnp.exp((done - hold) / (1 - hold) * jnp.log(e)))
        t = threshold  # linT: 1 → mid over [0, T), mid → e over [T, 1]
        mid = (1 + e + (1 - e) * (1 - t)) / 2
        return jnp.where(done < t, 1 + (mid - 1) * done / t, e + (mid - e) * rest / (1 - t))

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_start + (1 - warmup_start) * step / max(warmup_steps, 1)
        # 1 − done from whole step counts: float32 would cancel in 1 − done near the end of a long run
        span = max(total_steps - 1 - warmup_steps, 1)
        done = jnp.clip((step - warmup_steps) / span, 0.0, 1.0)
        rest = jnp.clip((total_steps - 1 - step) / span, 0.0, 1.0)
        return peak * jnp.where(step < warmup_steps, warm, after_warmup(done, rest))
    return schedule


def wd_schedule(start: float, end: float | None, total_steps: int) -> optax.Schedule:
    """Weight decay along a half cosine from ``start`` to ``end`` over the run (constant when end is None)."""
    end = start if end is None else end

    def schedule(step):
        done = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps - 1, 1), 0.0, 1.0)
        return end + (start - end) * (0.5 + 0.5 * jnp.cos(jnp.pi * done))
    return schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the gradients by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ their global norm: what the
    official trainer's ``torch.nn.utils.clip_grad_norm_`` does (optax's own clip has no 1e-6)."""
    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adamw(params, *, lr: optax.Schedule, weight_decay: optax.Schedule, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, grad_clip: float = 0.0) -> optax.GradientTransformation:
    """AdamW over ``params`` with decay masked by :func:`decay_mask`, after clipping the gradients'
    global norm to ``grad_clip`` (0: no clipping)."""
    if grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0 (0 turns clipping off), got {grad_clip}")
    tx = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask(params))
    return optax.chain(clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx
