"""The VAR transformer: a decoder-only GPT with AdaLN class conditioning and a block-causal mask.

All tokens of scale k attend to every token of scales ≤ k.  The ``depth`` blocks are stored stacked
on a leading ``layers`` axis and run with ``jax.lax.scan``, so compile time does not grow with
depth; each block is the pure function :func:`block_forward` of its slice of the parameters.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.models.layers import WEIGHT_PRODUCT, Linear, dense, param, trunc_normal
from var_jax.ops.transpose import moved, transposed

MAX_SCALE_MUL = math.log(100.0)  # clamp of the learned attention temperature (log scale)


@dataclasses.dataclass(frozen=True)
class VARConfig:
    """Arguments of the official ``VAR`` constructor and ``init_weights`` with their defaults, plus a
    compute dtype and a rematerialisation policy (``none``, ``full`` or a name in
    ``jax.checkpoint_policies``).  :meth:`for_depth` gives the released models' settings."""
    vocab_size: int = 4096
    Cvae: int = 32
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = False
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = 0.02  # < 0: sqrt(1 / (3·embed_dim))
    dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if len(self.patch_nums) < 2 or list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(f"patch_nums must be at least 2 strictly increasing sizes, got {self.patch_nums}")
        if self.remat not in ("none", "full") and not hasattr(jax.checkpoint_policies, self.remat):
            raise ValueError(f"remat must be 'none', 'full' or a jax.checkpoint_policies name, got {self.remat!r}")

    @classmethod
    def for_depth(cls, depth: int, **overrides) -> "VARConfig":
        """The official ``build_vae_var`` settings: width 64·d, d heads, drop-path 0.1·d/24,
        l2-normalised attention and init_std = sqrt(1 / (3·width))."""
        base = dict(depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24,
                    attn_l2_norm=True, init_std=-1.0)
        return cls(**{**base, **overrides})

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def seq_len(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def std(self) -> float:
        return self.init_std if self.init_std >= 0 else math.sqrt(1 / self.embed_dim / 3)

    def begin_ends(self) -> list[tuple[int, int]]:
        """[start, end) of each scale in the token sequence."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return out

    def level_ids(self) -> np.ndarray:
        """Scale index of every position (the official ``lvl_1L`` without its batch axis)."""
        return np.concatenate([np.full(pn * pn, si) for si, pn in enumerate(self.patch_nums)]).astype(np.int32)

    def attn_mask(self) -> np.ndarray:
        """Block-causal mask (L, L): query q sees key k iff level(k) ≤ level(q)."""
        lvl = self.level_ids()
        return lvl[None, :] <= lvl[:, None]

    def drop_path_rates(self) -> np.ndarray:
        return np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)

    @classmethod
    def from_dict(cls, d: dict) -> "VARConfig":
        from var_jax.models.vqvae import config_from_dict
        return config_from_dict(cls, d, ignore=("flash_if_available", "fused_if_available"))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# -- the per-block computation ------------------------------------------------------------------
def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, in float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def drop_path(x: jax.Array, rate: jax.Array, key: jax.Array | None) -> jax.Array:
    """Stochastic depth per sample, scaled by 1/keep (timm's DropPath)."""
    if key is None:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


# attend(q, k, v, scale, dropout_key) -> (output (B, Lq, H, hd), aux): the teacher-forced forward
# attends under the block-causal mask; the sampler attends over its KV cache and returns the
# updated cache as aux.
Attend = Callable[[jax.Array, jax.Array, jax.Array, float, jax.Array | None], tuple[jax.Array, object]]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, mask: jax.Array | None = None,
              drop_rate: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """Softmax attention of queries (B, Lq, H, hd) over keys and values stored heads first (B, H, Lk,
    hd), optionally under a boolean mask (Lq, Lk); softmax in float32 → (B, Lq, H, hd).  Heads first
    is the layout of the products' batch: the sampler keeps its KV cache so, and the keys and values
    it has stored are not transposed again at every scale (on a CPU, at VAR-d16's last scale in
    float32, those transposes took 72 ms of the blocks' 1.50 s)."""
    s = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    w = dropout(jax.nn.softmax(s, axis=-1), drop_rate, key)
    o = jnp.einsum("bhqk,bhkd->bhqd", w.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.transpose(0, 2, 1, 3)


def heads_first(x: jax.Array) -> jax.Array:
    """(B, L, H, hd) → (B, H, L, hd), the key and value layout of :func:`attention`."""
    return x.transpose(0, 2, 1, 3)


def query_groups(patch_nums: tuple[int, ...], max_groups: int = 3) -> list[tuple[int, int]]:
    """[start, end) of runs of whole scales whose queries attend together.  Under the block-causal
    mask no query of a run sees a key past the run's end, so attending run by run never computes the
    score blocks above the diagonal, which the mask would zero.  The runs are the split into at most
    ``max_groups`` that computes the fewest scores: for VAR's ten scales up to 16×16, scales 1-8 ×
    scale 13 × scale 16, 0.67 of the full 680 × 680 (3 runs; 4 would give 0.64)."""
    ends = np.cumsum([pn * pn for pn in patch_nums]).tolist()

    def bounds(cuts):
        return list(zip([0] + [ends[i] for i in cuts], [ends[i] for i in cuts] + [ends[-1]]))

    splits = (c for g in range(min(max_groups, len(ends))) for c in itertools.combinations(range(len(ends) - 1), g))
    return bounds(min(splits, key=lambda cuts: sum((e - b) * e for b, e in bounds(cuts))))


def block_causal_attention(cfg: VARConfig, num_scales: int) -> Attend:
    """The teacher-forced forward's attention over the first ``num_scales`` scales under the
    block-causal mask, run by run of :func:`query_groups`; a run of one scale sees every key up to
    its end and needs no mask.  On a CPU it takes :func:`row_major_attention` (unless attention
    dropout is on); other platforms keep JAX's own gradients, whose memory the TPU plans were made
    with (:func:`row_major_attention` would add 0.2 GiB a chip to VAR-d16's step on v5e-64)."""
    groups, mask, drop_rate = query_groups(cfg.patch_nums[:num_scales]), cfg.attn_mask(), cfg.attn_drop_rate

    def by_runs(q, k, v, scale, key):
        keys = [None] * len(groups) if key is None else jax.random.split(key, len(groups))
        k, v = heads_first(k), heads_first(v)
        out = []
        for (begin, end), kg in zip(groups, keys):
            m = mask[begin:end, :end]
            out.append(attention(q[:, begin:end], k[:, :, :end], v[:, :, :end], scale,
                                 None if m.all() else jnp.asarray(m), drop_rate, kg))
        return jnp.concatenate(out, axis=1)

    def by_runs_row_major(q, k, v, scale):
        qh, kt, vh = moved(q, (0, 2, 1, 3)), moved(k, (0, 2, 3, 1)), moved(v, (0, 2, 1, 3))
        out = [row_major_attention(qh[:, :, begin:end], kt[..., :end], vh[:, :, :end],
                                   None if mask[begin:end, :end].all() else jnp.asarray(mask[begin:end, :end]),
                                   scale)
               for begin, end in groups]
        return moved(jnp.concatenate(out, axis=2), (0, 2, 1, 3))

    def attend(q, k, v, scale, key):
        if key is None or drop_rate <= 0:
            return jax.lax.platform_dependent(
                q, k, v, cpu=lambda q, k, v: by_runs_row_major(q, k, v, scale),
                default=lambda q, k, v: by_runs(q, k, v, scale, None).astype(q.dtype)), None
        return by_runs(q, k, v, scale, key), None

    return attend


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def row_major_attention(qh: jax.Array, kt: jax.Array, vh: jax.Array, mask: jax.Array | None,
                        scale: float) -> jax.Array:
    """Softmax attention of queries (B, H, Lq, hd) over keys stored transposed (B, H, hd, Lk) and
    values (B, H, Lk, hd), optionally under a boolean mask (Lq, Lk) → (B, H, Lq, hd) in their dtype.
    Scores and softmax in float32.

    Every product, the gradients' too, multiplies row-major operands in the inputs' dtype, with
    float32 cotangents rounded to it first (as ``layers.row_major_matmul`` does).  Left to JAX, the
    gradients multiply transposed operands, which XLA's CPU backend converts to float32 before a
    batched bfloat16 product, and multiplies in float32 with Eigen rather than YNNPACK.  VAR-d16 at
    batch 2 on a 2-core AMD EPYC with AVX-512 BF16: the attention forward and backward under
    ``dots_saveable`` took 69-73 against 86-94 ms a layer in bfloat16, the bfloat16 training step
    0.96 of its time (median of 10 pairs of fresh processes, 7.68-9.26 against 7.92-9.42 s); the
    float32 step 0.98 (both programs in one process, called alternately, median of 6 calls)."""
    return _row_major_attention_fwd(qh, kt, vh, mask, scale)[0]


def _row_major_attention_fwd(qh, kt, vh, mask, scale):
    s = jnp.matmul(qh, kt, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    w = jax.nn.softmax(s, axis=-1)
    o = jnp.matmul(w.astype(vh.dtype), vh, preferred_element_type=jnp.float32).astype(vh.dtype)
    return o, (qh, kt, vh, w)


def _row_major_attention_bwd(scale, residuals, g):
    qh, kt, vh, w = residuals
    g = g.astype(vh.dtype)
    dw = jnp.matmul(g, transposed(vh), preferred_element_type=jnp.float32)
    ds = (w * (dw - jnp.sum(dw * w, axis=-1, keepdims=True)) * scale).astype(qh.dtype)
    dq = jnp.matmul(ds, transposed(kt), preferred_element_type=jnp.float32)
    dkt = jnp.matmul(transposed(qh), ds, preferred_element_type=jnp.float32)
    dv = transposed(jnp.matmul(transposed(g), w.astype(vh.dtype), preferred_element_type=jnp.float32))
    return dq.astype(qh.dtype), dkt.astype(kt.dtype), dv.astype(vh.dtype), None  # none for the mask


row_major_attention.defvjp(_row_major_attention_fwd, _row_major_attention_bwd)


def qkv_heads(p: dict, h: jax.Array, cfg: VARConfig, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries, keys and values (B, L, H, hd) of one block, normalised when ``attn_l2_norm``."""
    C = cfg.embed_dim
    kernel = p["mat_qkv"].reshape(C, 3 * C)
    bias = jnp.concatenate([p["q_bias"].reshape(-1), jnp.zeros((C,), jnp.float32), p["v_bias"].reshape(-1)])
    qkv = dense(h, kernel, bias, dtype).reshape(h.shape[0], h.shape[1], 3, cfg.num_heads, cfg.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cfg.attn_l2_norm:
        temperature = jnp.exp(jnp.minimum(p["scale_mul"], MAX_SCALE_MUL))
        q = l2_normalize(q) * temperature[:, None]
        k = l2_normalize(k)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def attn_scale(cfg: VARConfig) -> float:
    """Softmax scale: 1 with l2-normalised q, k (the temperature is learned), else 0.25/√head_dim."""
    return 1.0 if cfg.attn_l2_norm else 0.25 / math.sqrt(cfg.head_dim)


def block_modulation(p: dict, ada_cond: jax.Array, cfg: VARConfig) -> jax.Array:
    """One block's AdaLN modulation (B, 6, C): [γ1, γ2, scale1, scale2, shift1, shift2].  ``ada_cond``
    is the class embedding (B, D), or with shared AdaLN the shared projection (B, 6, C).  It depends
    on the class only, so the sampler computes it once for every scale."""
    if cfg.shared_aln:
        return p["ada_gss"][None] + ada_cond
    B, C = ada_cond.shape[0], cfg.embed_dim
    return dense(jax.nn.silu(ada_cond), p["ada_lin"]["kernel"], p["ada_lin"]["bias"],
                 jnp.dtype(cfg.dtype)).reshape(B, 6, C)


def block_forward(p: dict, x: jax.Array, ada_cond: jax.Array, cfg: VARConfig, attend: Attend, *,
                  drop_path_rate: jax.Array | float = 0.0, key: jax.Array | None = None,
                  mods: jax.Array | None = None):
    """One AdaLNSelfAttn block → (x, the aux of ``attend``).  ``p`` holds one layer's parameters;
    ``ada_cond`` drives :func:`block_modulation`, unless its result ``mods`` is given.  ``key`` turns
    on the training-time randomness (drop-path, dropout)."""
    dtype = jnp.dtype(cfg.dtype)
    if mods is None:
        mods = block_modulation(p, ada_cond, cfg)
    gamma1, gamma2, scale1, scale2, shift1, shift2 = (mods[:, i, None, :] for i in range(6))
    keys = jax.random.split(key, 5) if key is not None else [None] * 5  # proj, drop-path ×2, ffn, attn

    h = layer_norm(x, cfg.norm_eps) * (1 + scale1) + shift1
    q, k, v = qkv_heads(p["attn"], h, cfg, dtype)
    o, aux = attend(q, k, v, attn_scale(cfg), keys[4])
    # One (B·L, C) × (C, C) product: contracting (H, hd) in an einsum makes XLA transpose the kernel first.
    C = cfg.embed_dim
    o = dense(o.reshape(*o.shape[:2], C), p["attn"]["proj"]["kernel"].reshape(C, C), p["attn"]["proj"]["bias"], dtype)
    o = dropout(o, cfg.drop_rate, keys[0])
    x = x + drop_path(o * gamma1, drop_path_rate, keys[1])

    h = layer_norm(x, cfg.norm_eps) * (1 + scale2) + shift2
    f = p["ffn"]
    h = jax.nn.gelu(dense(h, f["fc1"]["kernel"], f["fc1"]["bias"], dtype), approximate=True)
    h = dropout(dense(h, f["fc2"]["kernel"], f["fc2"]["bias"], dtype), cfg.drop_rate, keys[2])
    return x + drop_path(h * gamma2, drop_path_rate, keys[3]), aux


# -- modules ------------------------------------------------------------------------------------
class Blocks(nnx.Module):
    """All ``depth`` blocks, every parameter stacked on a leading ``layers`` axis.

    Shapes per layer: ``attn.mat_qkv`` (C, 3, H, hd), ``attn.q_bias``/``v_bias`` (H, hd),
    ``attn.scale_mul`` (H,), ``attn.proj`` (H, hd, C), ``ffn.fc1`` (C, 4C), ``ffn.fc2`` (4C, C),
    ``ada_lin`` (D, 6C) with chunks [γ1, γ2, scale1, scale2, shift1, shift2], or ``ada_gss`` (6, C).
    """

    def __init__(self, cfg: VARConfig, key: jax.Array):
        d, C, H, hd, hidden, std = cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_hidden, cfg.std
        k = iter(jax.random.split(key, 6))
        out_scale = 1 / math.sqrt(2 * d)
        self.attn = nnx.Dict(
            mat_qkv=param(trunc_normal(next(k), (d, C, 3, H, hd), std), ("layers", "embed", None, "heads", None)),
            q_bias=param(jnp.zeros((d, H, hd)), ("layers", "heads", None)),
            v_bias=param(jnp.zeros((d, H, hd)), ("layers", "heads", None)),
            proj=Linear(trunc_normal(next(k), (d, H, hd, C), std) * out_scale,
                        ("layers", "heads", None, "embed"), ("layers", "embed")),
        )
        if cfg.attn_l2_norm:
            self.attn["scale_mul"] = param(jnp.full((d, H), math.log(4.0)), ("layers", "heads"))
        self.ffn = nnx.Dict(
            fc1=Linear(trunc_normal(next(k), (d, C, hidden), std), ("layers", "embed", "mlp"), ("layers", "mlp")),
            fc2=Linear(trunc_normal(next(k), (d, hidden, C), std) * out_scale,
                       ("layers", "mlp", "embed"), ("layers", "embed")),
        )
        # AdaLN rows: gammas start near zero (init_adaln_gamma), scales and shifts at init_adaln.
        chunk_scale = jnp.array([cfg.init_adaln_gamma] * 2 + [cfg.init_adaln] * 4, jnp.float32)
        if cfg.shared_aln:
            gss = jax.random.normal(next(k), (d, 6, C)) / math.sqrt(C)
            self.ada_gss = param(gss * chunk_scale[:, None], ("layers", None, "embed"))
        else:
            w = trunc_normal(next(k), (d, C, 6, C), std) * chunk_scale[:, None]
            self.ada_lin = Linear(w.reshape(d, C, 6 * C), ("layers", "embed", None), ("layers", None))


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    save = getattr(jax.checkpoint_policies, policy)
    if "dots" in policy:  # the policies that keep products keep the weight products (a custom_vjp) by name
        save = jax.checkpoint_policies.save_from_both_policies(
            save, jax.checkpoint_policies.save_only_these_names(WEIGHT_PRODUCT))
    return jax.checkpoint(fn, policy=save)


# The kernels that every use multiplies in the compute dtype (``dense(..., dtype)``): stored in it
# for inference they give the same results, read in half the bytes and are not converted at each use.
COMPUTE_DTYPE_KERNELS = (("blocks", "attn", "mat_qkv"), ("blocks", "attn", "proj", "kernel"),
                         ("blocks", "ffn", "fc1", "kernel"), ("blocks", "ffn", "fc2", "kernel"),
                         ("blocks", "ada_lin", "kernel"), ("head", "kernel"))


# The blocks' weight kernels: what the CPU sampler holds one array per layer (``inference_state``).
LAYER_KERNELS = (("attn", "mat_qkv"), ("attn", "proj", "kernel"), ("ffn", "fc1", "kernel"),
                 ("ffn", "fc2", "kernel"), ("ada_lin", "kernel"))


def inference_state(state: nnx.State, cfg: VARConfig, *, per_layer: bool = False) -> nnx.State:
    """A VAR's parameters for inference: :data:`COMPUTE_DTYPE_KERNELS` in the compute dtype (the same
    arrays in float32).  Not for training, whose optimizer keeps float32 weights.

    ``per_layer`` (for a CPU): the blocks' :data:`LAYER_KERNELS` are held as a tuple of one array per
    layer instead of stacked, for products by :class:`~var_jax.models.layers.LayerKernel`.  In a scan
    over the stacked layers, XLA's CPU backend multiplies by a copy of each layer's slice, made
    again at every scale of the sampler (VAR-d16, batch 1, float32: the 1×1 scale took 107 ms with
    the copies, 56 ms without).  In float32 the per-layer arrays are copies: the model's own stacked
    kernels stay with it until it is dropped."""
    dtype = jnp.dtype(cfg.dtype)

    def convert(path, x):
        names = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
        if x.dtype != dtype and any(names[:len(p)] == p for p in COMPUTE_DTYPE_KERNELS):
            x = x.astype(dtype)
        if per_layer and names[0] == "blocks" and any(names[1:1 + len(p)] == p for p in LAYER_KERNELS):
            x = tuple(x[i] for i in range(x.shape[0]))
        return x

    return jax.tree_util.tree_map_with_path(convert, state)


class VAR(nnx.Module):
    def __init__(self, cfg: VARConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C, std = cfg.embed_dim, cfg.std
        k = iter(jax.random.split(rngs.params(), 10))
        self.word_embed = Linear(trunc_normal(next(k), (cfg.Cvae, C), std), (None, "embed"), ("embed",))
        self.class_emb = param(trunc_normal(next(k), (cfg.num_classes + 1, C), std), (None, "embed"))
        first_l = cfg.patch_nums[0] ** 2  # the start tokens: the class embedding, once per first-scale cell
        self.pos_start = param(trunc_normal(next(k), (first_l, C), std), (None, "embed"))
        self.pos_1LC = param(trunc_normal(next(k), (cfg.seq_len, C), std), (None, "embed"))
        self.lvl_embed = param(trunc_normal(next(k), (len(cfg.patch_nums), C), std), (None, "embed"))
        if cfg.shared_aln:
            self.shared_ada_lin = Linear(trunc_normal(next(k), (C, 6 * C), std), ("embed", None), (None,))
        self.blocks = Blocks(cfg, next(k))
        self.head_nm = Linear(trunc_normal(next(k), (C, 2 * C), std) * cfg.init_adaln, ("embed", None), (None,))
        self.head = Linear(trunc_normal(next(k), (C, cfg.vocab_size), std) * cfg.init_head,
                           ("embed", "vocab"), ("vocab",))

    # -- pieces shared with the sampler -------------------------------------------------------------
    def class_embedding(self, label: jax.Array) -> jax.Array:
        """(B,) labels in [0, num_classes] (num_classes = unconditional) → (B, C)."""
        return jnp.take(self.class_emb[...], label, axis=0)

    def ada_condition(self, cond: jax.Array) -> jax.Array:
        """What the blocks are conditioned on: the class embedding, or its shared projection (B, 6, C)."""
        if not self.cfg.shared_aln:
            return cond
        return self.shared_ada_lin(jax.nn.silu(cond)).reshape(cond.shape[0], 6, self.cfg.embed_dim)

    def level_pos(self) -> jax.Array:
        """Scale embedding plus absolute position of every token (L, C)."""
        return jnp.take(self.lvl_embed[...], jnp.asarray(self.cfg.level_ids()), axis=0) + self.pos_1LC[...]

    def logits(self, h: jax.Array, cond: jax.Array) -> jax.Array:
        """head(AdaLN(h)) in float32; the AdaLN is driven by the raw class embedding even with shared AdaLN."""
        scale, shift = jnp.split(self.head_nm(jax.nn.silu(cond))[:, None, :], 2, axis=-1)
        h = layer_norm(h, self.cfg.norm_eps) * (1 + scale) + shift
        return self.head(h, jnp.dtype(self.cfg.dtype))

    def block_params(self) -> dict:
        """The stacked block parameters as a plain nested dict of arrays (leading axis = layer)."""
        return nnx.to_pure_dict(nnx.state(self.blocks, nnx.Param))

    def run_blocks(self, x: jax.Array, ada_cond: jax.Array, attend: Attend, key: jax.Array | None = None,
                   constrain: Callable[[jax.Array], jax.Array] | None = None):
        """Scan the stacked blocks over x (B, L, C).  ``constrain`` lays out the residual stream
        between blocks (under FSDP: split by batch, whole along embed; left alone, XLA may keep
        it split like the parameters and gather every activation)."""
        cfg = self.cfg
        rates = jnp.asarray(cfg.drop_path_rates())
        keys = None if key is None else jax.random.split(key, cfg.depth)
        constrain = constrain or (lambda h: h)

        def body(h, xs):
            p, rate, k = xs
            h = block_forward(p, constrain(h), ada_cond, cfg, attend, drop_path_rate=rate, key=k)[0]
            return constrain(h), None

        x, _ = jax.lax.scan(_remat(body, cfg.remat), x, (self.block_params(), rates, keys))
        return x

    # -- teacher forcing ---------------------------------------------------------------------------
    def __call__(self, label: jax.Array, x_tokens: jax.Array, *, key: jax.Array | None = None,
                 num_scales: int | None = None,
                 constrain: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
        """Teacher-forced logits (B, L, V).

        ``label`` (B,) class ids; ``x_tokens`` (B, L - 1, Cvae) the teacher-forcing input from the
        tokenizer (``idx_to_var_input``).  With ``key`` (training) labels are dropped to the null
        class with ``cond_drop_rate`` and drop-path / dropout are active.  ``num_scales`` (progressive
        training) runs only the first scales: ``x_tokens`` then holds the first ``L' - pn₀²`` inputs
        and the logits cover the L' tokens of those scales (the block-causal mask makes them equal
        to the first L' of the whole sequence's).  ``constrain``: see :meth:`run_blocks`.
        """
        cfg = self.cfg
        B = label.shape[0]
        n = len(cfg.patch_nums) if num_scales is None else int(num_scales)
        if not 1 <= n <= len(cfg.patch_nums):
            raise ValueError(f"num_scales must be in [1, {len(cfg.patch_nums)}], got {num_scales}")
        end = cfg.begin_ends()[n - 1][1]
        want = (B, end - cfg.patch_nums[0] ** 2, cfg.Cvae)
        if tuple(x_tokens.shape) != want:
            raise ValueError(f"x_tokens must have shape {want} (batch, L - first scale, Cvae) for patch_nums "
                             f"{cfg.patch_nums[:n]}, got {tuple(x_tokens.shape)}")
        key_cond, key_blocks = jax.random.split(key) if key is not None else (None, None)
        if key_cond is not None and cfg.cond_drop_rate > 0:
            drop = jax.random.uniform(key_cond, (B,)) < cfg.cond_drop_rate
            label = jnp.where(drop, cfg.num_classes, label)
        cond = self.class_embedding(label)
        sos = cond[:, None, :] + self.pos_start[...][None]
        x = jnp.concatenate([sos, self.word_embed(x_tokens.astype(jnp.float32))], axis=1)
        x = x + self.level_pos()[None, :end]
        x = self.run_blocks(x, self.ada_condition(cond), block_causal_attention(cfg, n), key_blocks,
                            constrain)
        return self.logits(x, cond)
