"""Sampling: per (models, batch, settings) one compiled XLA program runs every scale, another decodes.

The scales are unrolled in Python, each with its static shape; the KV cache of the whole sequence
is preallocated and written at static offsets; classifier-free guidance doubles the batch with the
official ramp t = cfg·k/(K-1), logits = (1 + t)·cond - t·uncond.  f̂ is accumulated over the scales
and decoded to images by the second program.  Zero-shot in-painting, out-painting and
class-conditional editing teacher-force an image's own tokens where a mask says to keep them (the
official notebook).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from var_jax import parallel
from var_jax.config import check_compatible
from var_jax.models.layers import LayerKernel
from var_jax.models.var import VAR, attention, block_forward, block_modulation, heads_first, inference_state
from var_jax.models.vqvae import VQVAE
from var_jax.ops.resample import resize
from var_jax.ops.sampling import filter_top_k_top_p, gumbel_noise, gumbel_softmax, sample_categorical


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """``cfg``: guidance at the last scale (0 = none); ``top_k`` 0 = off; ``top_p`` 0 = off, else in
    (0, 1]; ``more_smooth``: the official Gumbel-softmax mode for visualisation (not for FID)."""
    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    more_smooth: bool = False

    def __post_init__(self):
        if not self.cfg >= 0:
            raise ValueError(f"cfg must be ≥ 0 (0 = no guidance), got {self.cfg}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be a whole number ≥ 0 (0 = off), got {self.top_k}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], or 0 to switch it off; got {self.top_p}")


# The official evaluation settings (VAR's README: cfg 1.5, top-k 900, top-p 0.96): `var-jax sample`'s defaults.
OFFICIAL_SETTINGS = SamplingSettings(cfg=1.5, top_k=900, top_p=0.96)
RELEASED_VOCAB = 4096


def default_settings(vocab_size: int, **given) -> SamplingSettings:
    """The official settings, with top-k keeping the share of the codebook that 900 keeps of the released
    4,096 codes (112 of 512), then the settings ``given``: the defaults of ``sample`` and ``var-jax sample``."""
    top_k = max(1, round(OFFICIAL_SETTINGS.top_k * vocab_size / RELEASED_VOCAB))
    return dataclasses.replace(OFFICIAL_SETTINGS, **{"top_k": top_k, **given})


class SampleResult(NamedTuple):
    images: jax.Array        # (B, H, W, 3): uint8, or float32 in [0, 1]
    tokens: list[jax.Array]  # per scale (B, pn²), row-major
    labels: jax.Array        # (B,) the classes used (num_classes = unconditional)


# -- the traced program ---------------------------------------------------------------------------
def _layer(p: dict, kernels: dict, layer: jax.Array) -> dict:
    """One layer's parameters: its slice ``p`` of the stacked ones and its kernels held per layer."""
    if not kernels:
        return p
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(p),
                                         **{path: LayerKernel(ks, layer) for path, ks in kernels.items()}})


def _attention_by_row(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """:func:`attention` one batch row at a time when lowered for a CPU (a loop over the rows), whole
    elsewhere.  On a CPU the whole batch's float32 scores (2B, heads, queries, keys) go through main
    memory (at VAR-d16's last scale at batch 8, 178 MB a layer); one row's (11 MB there) stay in the
    processor's cache.  On a 2-core AMD EPYC (32 MB of L3), each scale compiled alone, float32: the
    13×13 scale of batch 8 took 6.9 and 7.2 s against 10.4 and 10.8 s, the 16×16 one 13.0 and 11.4 s
    against 14.4 and 15.2 s, and at batch 1 the 13×13 one 0.87 and 0.90 s against 1.15 and 1.10 s (the
    other scales within noise); bfloat16 at batch 8, the 16×16 scale 7.6 and 8.4 s against 9.2 and
    9.0 s (times of the whole batch)."""
    whole = lambda q, k, v: attention(q, k, v, scale)  # noqa: E731
    by_row = lambda q, k, v: jax.lax.map(lambda r: whole(*(a[None] for a in r))[0], (q, k, v))  # noqa: E731
    return jax.lax.platform_dependent(q, k, v, cpu=by_row, default=whole)


def _stored_dtype(dtype) -> jnp.dtype:
    """The KV cache's element type for keys and values of ``dtype``: on a CPU a 16-bit float's bits
    as uint16.  XLA's CPU backend computes a bfloat16 update of a slice in float32, converting the
    whole array there and back, so each layer's write into a bfloat16 cache read and wrote all of it
    (VAR-d16 at batch 1: 28 MB each for keys and values); an integer slice is written in place.
    Other backends update bfloat16 in place and keep it."""
    if jnp.dtype(dtype).itemsize == 2 and jax.default_backend() == "cpu":
        return jnp.dtype(jnp.uint16)
    return jnp.dtype(dtype)


def _as_stored(a: jax.Array, dtype) -> jax.Array:
    return jax.lax.bitcast_convert_type(a.astype(dtype), _stored_dtype(dtype))


def _as_loaded(a: jax.Array, dtype) -> jax.Array:
    return jax.lax.bitcast_convert_type(a, jnp.dtype(dtype))


def _cached_blocks(var: VAR, params: dict, kernels: dict, x, mods, cache, begin: int, end: int, *,
                   by_row: bool):
    """Run every block on one scale's tokens (positions [begin, end)), attending over positions
    [0, end).  The cache (layers, 2B, heads, positions, head_dim) holds every scale but the last (no
    later scale reads the last one's keys and values): this scale's keys and values are written into
    it when it has room, else appended.  ``by_row``: :func:`_attention_by_row` (not for a batch split
    over a mesh, which a loop over its rows would gather)."""
    cfg = var.cfg
    write = end <= cache[0].shape[3]
    attend_cache = _attention_by_row if by_row else attention

    def body(carry, xs):
        h, ck, cv = carry
        p, m, layer = xs
        p = _layer(p, kernels, layer)

        def attend(q, k, v, scale, _key):
            k, v = (_as_stored(heads_first(a), cfg.dtype) for a in (k, v))
            if write:
                at = (layer, 0, 0, begin, 0)
                ck2 = jax.lax.dynamic_update_slice(ck, k[None], at)
                cv2 = jax.lax.dynamic_update_slice(cv, v[None], at)
                keys = jax.lax.dynamic_index_in_dim(ck2, layer, keepdims=False)[:, :, :end]
                values = jax.lax.dynamic_index_in_dim(cv2, layer, keepdims=False)[:, :, :end]
            else:
                past = lambda c, new: jnp.concatenate(  # noqa: E731
                    [jax.lax.dynamic_index_in_dim(c, layer, keepdims=False)[:, :, :begin], new], axis=2)
                keys, values, ck2, cv2 = past(ck, k), past(cv, v), ck, cv
            return attend_cache(q, _as_loaded(keys, cfg.dtype), _as_loaded(values, cfg.dtype), scale), (ck2, cv2)

        h, (ck, cv) = block_forward(p, h, None, cfg, attend, mods=m)
        return (h, ck, cv), None

    (x, ck, cv), _ = jax.lax.scan(body, (x, *cache), (params, mods, jnp.arange(cfg.depth)))
    return x, (ck, cv)


class Context(NamedTuple):
    """What every scale reads: the class embeddings of the doubled batch (conditional rows, then the
    null class), every block's AdaLN modulation (depth, 2B, 6, C), the level + position embeddings and
    the block parameters (without the AdaLN ones: the modulation depends on the class only, so it is
    computed once here rather than at every scale, which at batch 1 saves reading a third of the
    weights per scale): stacked in ``params``, and in ``kernels`` by path those held one array per
    layer (``inference_state(per_layer=True)``; empty otherwise).  ``noise``: the Gumbel noise of
    every scale's draw (B, positions, V), drawn at once."""
    cond: jax.Array
    mods: jax.Array
    lvl_pos: jax.Array
    params: dict
    kernels: dict
    noise: jax.Array


class Carry(NamedTuple):
    """What one scale hands to the next: the next scale's input tokens (2B, n, C), the KV cache (in
    :func:`_stored_dtype`) and f̂."""
    x: jax.Array
    cache: tuple[jax.Array, jax.Array]
    f_hat: jax.Array


def start(vae: VQVAE, var: VAR, labels: jax.Array, key: jax.Array,
          layout: parallel.Layout | None = None) -> tuple[Context, Carry]:
    """The context of a batch of ``labels`` (B,) with the draws' noise from ``key``, and the first
    scale's input: the start tokens.  ``layout`` splits the KV cache over a mesh by batch and heads."""
    cfg = var.cfg
    B = labels.shape[0]
    cond = var.class_embedding(jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)]))
    lvl_pos = var.level_pos()
    first_l = cfg.begin_ends()[0][1]
    x = cond[:, None, :] + var.pos_start[...][None] + lvl_pos[None, :first_l]
    cache_shape = (cfg.depth, 2 * B, cfg.num_heads, cfg.begin_ends()[-1][0], cfg.head_dim)
    cache = tuple(jnp.zeros(cache_shape, _stored_dtype(cfg.dtype)) for _ in "kv")
    if layout is not None:
        cache = tuple(layout.constrain(c, ("layers", "batch", "heads", "seq", None)) for c in cache)
    side = cfg.patch_nums[-1]
    f_hat = jnp.zeros((B, side, side, vae.cfg.z_channels), jnp.float32)
    flat = traverse_util.flatten_dict(var.block_params())
    kernels = {path: flat.pop(path) for path in list(flat) if isinstance(flat[path], tuple)}  # held per layer
    params, ada = traverse_util.unflatten_dict(flat), var.ada_condition(cond)
    modulation = lambda p, layer: block_modulation(_layer(p, kernels, layer), ada, cfg)  # noqa: E731
    mods = jax.lax.map(lambda xs: modulation(*xs), (params, jnp.arange(cfg.depth)))
    params = {k: v for k, v in params.items() if k not in ("ada_lin", "ada_gss")}
    kernels = {path: ks for path, ks in kernels.items() if path[0] != "ada_lin"}
    noise = gumbel_noise(jax.random.fold_in(key, len(cfg.patch_nums)), (B, cfg.seq_len, cfg.vocab_size))
    return Context(cond, mods, lvl_pos, params, kernels, noise), Carry(x, cache, f_hat)


def scale_step(vae: VQVAE, var: VAR, ctx: Context, carry: Carry, si: int, key: jax.Array,
               settings: SamplingSettings, forced: tuple[jax.Array, jax.Array] | None = None,
               layout: parallel.Layout | None = None):
    """Scale ``si`` (static): the blocks on its tokens, guided logits, the draw, f̂ and the next
    scale's input.  → (carry, tokens (B, pn²), guided logits (B, pn², V)).  ``layout``: the mesh
    the batch is split over, if any."""
    cfg = var.cfg
    SN, begin_ends = len(cfg.patch_nums), cfg.begin_ends()
    (begin, end), pn, ratio = begin_ends[si], cfg.patch_nums[si], si / (SN - 1)
    B = carry.f_hat.shape[0]
    codebook = vae.quantize.embedding.embedding[...]
    x, cache = _cached_blocks(var, ctx.params, ctx.kernels, carry.x, ctx.mods, carry.cache, begin, end,
                              by_row=layout is None)
    logits = var.logits(x, ctx.cond)
    t = settings.cfg * ratio
    guided = (1 + t) * logits[:B] - t * logits[B:]
    filtered = filter_top_k_top_p(guided, settings.top_k, settings.top_p)
    idx = sample_categorical(filtered, ctx.noise[:, begin:end])
    if settings.more_smooth:  # the categorical draw above still happens, as in the official code
        tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
        h = jnp.matmul(gumbel_softmax(jax.random.fold_in(key, si), filtered * (1 + ratio), tau), codebook)
    else:
        h = jnp.take(codebook, idx, axis=0)
    if forced is not None:
        given, keep = forced
        idx = jnp.where(keep, given, idx)
        h = jnp.where(keep[..., None], jnp.take(codebook, given, axis=0), h)
    f_hat, nxt = vae.quantize.next_input(si, carry.f_hat, h.reshape(B, pn, pn, -1))
    if si < SN - 1:
        nb, ne = begin_ends[si + 1]
        x = var.word_embed(nxt.reshape(B, ne - nb, -1)) + ctx.lvl_pos[nb:ne]
        x = jnp.concatenate([x, x])
    return Carry(x, cache, f_hat), idx, guided


def generate(vae: VQVAE, var: VAR, labels: jax.Array, key: jax.Array, settings: SamplingSettings,
             forced: Sequence[tuple[jax.Array, jax.Array]] | None = None, *, with_logits: bool = False,
             layout: parallel.Layout | None = None):
    """All scales for labels (B,) → (final f̂ (B, h, w, Cvae), token maps[, guided logits per scale]).
    ``forced``, per scale, (tokens (B, pn²), keep (B, pn²) bool): where keep is set the given token
    replaces the sample."""
    ctx, carry = start(vae, var, labels, key, layout)
    tokens, all_logits = [], []
    for si in range(len(var.cfg.patch_nums)):
        carry, idx, logits = scale_step(vae, var, ctx, carry, si, key, settings,
                                        None if forced is None else forced[si], layout)
        tokens.append(idx)
        all_logits.append(logits)
    return (carry.f_hat, tokens, all_logits) if with_logits else (carry.f_hat, tokens)


def decode(vae: VQVAE, f_hat: jax.Array, layout: parallel.Layout | None = None) -> jax.Array:
    """f̂ (B, h, w, Cvae) → images in [-1, 1].  On a CPU one image at a time: XLA's CPU convolutions
    are faster on one image than on a batch (the released decoder at batch 8: 2.9 s an image one by
    one, 3.8 s batched).  On a mesh the batch stays whole, split over the devices."""
    if layout is None and f_hat.shape[0] > 1 and jax.default_backend() == "cpu":
        return jax.lax.map(lambda f: vae.fhat_to_img(f[None])[0], f_hat)
    return vae.fhat_to_img(f_hat)


def to_uint8(images01: jax.Array) -> jax.Array:
    """[0, 1] floats → uint8 with rounding (as torchvision's save_image)."""
    return jnp.clip(jnp.floor(images01 * 255 + 0.5), 0, 255).astype(jnp.uint8)


F_HAT_AXES = ("batch", None, None, None)  # how f̂ passes from the scales to the decode on a mesh


@functools.partial(jax.jit, static_argnames=("graphdefs", "settings", "layout"))
def _tokens_program(graphdefs, states, labels, key, forced, settings, layout=None):
    """Every scale: → (f̂, token maps)."""
    vae, var = nnx.merge(graphdefs[0], states[0]), nnx.merge(graphdefs[1], states[1])
    f_hat, tokens = generate(vae, var, labels, key, settings, forced, layout=layout)
    return (f_hat if layout is None else layout.constrain(f_hat, F_HAT_AXES)), tokens


@functools.partial(jax.jit, static_argnames=("graphdef", "uint8", "layout"))
def _image_program(graphdef, state, f_hat, uint8, layout=None):
    """f̂ → images in [0, 1], or uint8."""
    images = (decode(nnx.merge(graphdef, state), f_hat, layout) + 1) / 2
    return to_uint8(images) if uint8 else images


class SamplerPrograms(NamedTuple):
    """A sampler's two compiled programs for one batch shape: the scales ``tokens(states, labels,
    key, forced)`` → (f̂, token maps) and the decode ``images(vae_state, f̂)``.  Apart, the decode
    compiles beside the scales (its compile overlaps theirs, see ``Sampler._compile``), and
    its temporaries and the KV cache are never held at once."""
    tokens: jax.stages.Compiled
    images: jax.stages.Compiled


@functools.partial(jax.jit, static_argnames="graphdef")
def _image_tokens(graphdef, state, images):
    return nnx.merge(graphdef, state).img_to_idx(images)


# -- the Python API -------------------------------------------------------------------------------
class Sampler:
    """Images from a tokenizer and a VAR; each (batch size, settings) compiles once.

    >>> sampler = Sampler(vae, var, SamplingSettings(cfg=4, top_k=900, top_p=0.95))
    >>> result = sampler([207, 360, 387], seed=0)

    With a ``mesh`` (var_jax.parallel.make_mesh) the batch is split over its ``data`` and ``fsdp``
    axes and the parameters are laid out by ``rules`` (default: the rules of ``var_jax.config.MESH``:
    FSDP over ``fsdp``, tensor parallel over ``model``), so a model too big for one device
    samples on several and every process of a multi-host job takes part (each passes the same
    labels and key).  Batches must then be multiples of :attr:`batch_multiple`.
    """

    def __init__(self, vae: VQVAE, var: VAR, settings: SamplingSettings = SamplingSettings(), *,
                 uint8: bool = True, mesh: jax.sharding.Mesh | None = None, rules=None):
        check_compatible(vae.cfg, var.cfg)
        self.num_classes = var.cfg.num_classes
        self.settings, self.uint8 = settings, uint8
        (g_vae, s_vae), (g_var, s_var) = nnx.split(vae), nnx.split(var)
        per_layer = mesh is None and jax.default_backend() == "cpu"
        self.graphdefs, self.states = (g_vae, g_var), (s_vae, inference_state(s_var, var.cfg, per_layer=per_layer))
        self.f_hat_shape = (var.cfg.patch_nums[-1], var.cfg.patch_nums[-1], vae.cfg.z_channels)  # of one image
        self.layout, self.batch_multiple = None, 1
        self._programs: dict[tuple, SamplerPrograms] = {}
        if mesh is not None:
            self.layout = parallel.Layout.of(mesh, rules)
            rules = dict(self.layout.rules)
            self.states = parallel.place(self.states, parallel.shardings(self.states, mesh, rules))
            self.batch_multiple = parallel.batch_shards(mesh, rules)

    def _on_mesh(self, labels: jax.Array, key: jax.Array, forced):
        """Labels, key and forced tokens as global arrays of the mesh: the batch split, the key whole."""
        mesh, rules = self.layout.mesh, dict(self.layout.rules)
        if labels.shape[0] % self.batch_multiple:
            raise ValueError(f"a batch of {labels.shape[0]} cannot be split over {self.batch_multiple} devices: use a "
                             f"multiple of {self.batch_multiple}")
        split = lambda x: parallel.place(np.asarray(x), parallel.batch_sharding(mesh, rules, np.ndim(x)))  # noqa: E731
        key = parallel.place(np.asarray(jax.random.key_data(key)), parallel.replicated(mesh))
        forced = None if forced is None else [tuple(split(a) for a in pair) for pair in forced]
        return split(labels), jax.random.wrap_key_data(key), forced

    def labels(self, labels: Sequence[int] | np.ndarray | None, batch: int | None, key: jax.Array) -> jax.Array:
        """Class ids → an int32 array; None draws ``batch`` uniformly; -1 (or num_classes) = unconditional."""
        if labels is None:
            if not batch:
                raise ValueError("give labels, or batch= to draw random classes")
            return jax.random.randint(jax.random.fold_in(key, 0x7FFFFFFF), (batch,), 0, self.num_classes)
        given = np.asarray(labels).reshape(-1)
        if given.size == 0:
            raise ValueError("no labels given: pass at least one class id, or labels=None with batch=N for random "
                             "classes")
        if not (np.issubdtype(given.dtype, np.integer) or (np.issubdtype(given.dtype, np.number)
                                                           and np.all(given == np.round(given)))):
            raise ValueError(f"class ids must be whole numbers, got {labels!r}")
        arr = given.astype(np.int64)
        bad = arr[(arr < -1) | (arr > self.num_classes)]
        if bad.size:
            raise ValueError(f"class id {int(bad[0])} is out of range: use 0..{self.num_classes - 1}, or -1 / "
                             f"{self.num_classes} for unconditional")
        return jnp.asarray(np.where(arr == -1, self.num_classes, arr), jnp.int32)

    def __call__(self, labels=None, *, seed: int = 0, key: jax.Array | None = None, batch: int | None = None,
                 forced=None) -> SampleResult:
        key = jax.random.key(seed) if key is None else key
        labels = self.labels(labels, batch, key)
        if self.layout is not None:
            labels, key, forced = self._on_mesh(labels, key, forced)
        programs = self._compile(labels, key, forced)
        f_hat, tokens = programs.tokens(self.states, labels, key, forced)
        return SampleResult(programs.images(self.states[0], f_hat), tokens, labels)

    def compile(self, batch: int) -> SamplerPrograms:
        """The programs for ``batch`` images, compiled from abstract inputs (so the mesh may be of
        compile-only devices, a TPU topology); calls for that batch then use them."""
        labels, key = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.eval_shape(lambda: jax.random.key(0))
        if self.layout is not None:
            mesh, rules = self.layout.mesh, dict(self.layout.rules)
            labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=parallel.batch_sharding(mesh, rules, 1))
            key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))
        return self._compile(labels, key, None)

    def _compile(self, labels, key, forced) -> SamplerPrograms:
        """Both programs for inputs of these shapes (arrays or shapes), compiled once.  The decode is
        lowered first and compiled on another thread while the scales are lowered and compiled: on a
        2-core CPU VAR-d16's two programs compiled in 7.6-9.5 s so, 8.7-10.9 s one after the other
        (float32 and bfloat16, with the convolutions as XLA's)."""
        signature = tuple((a.shape, a.dtype) for a in jax.tree.leaves((labels, key, forced)))
        if signature in self._programs:
            return self._programs[signature]
        shape = (labels.shape[0], *self.f_hat_shape)
        sharding = None if self.layout is None else self.layout.sharding(F_HAT_AXES, shape)
        f_hat = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
        images = _image_program.lower(self.graphdefs[0], self.states[0], f_hat, self.uint8, self.layout)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            images = pool.submit(images.compile)
            tokens = _tokens_program.lower(self.graphdefs, self.states, labels, key, forced, self.settings,
                                           self.layout).compile()
            self._programs[signature] = SamplerPrograms(tokens, images.result())
        return self._programs[signature]


def sample(vae: VQVAE, var: VAR, labels=None, *, seed: int = 0, batch: int | None = None,
           **settings) -> SampleResult:
    """One-call sampling: ``sample(vae, var, [207, 360], cfg=4, top_k=900, top_p=0.95)``; settings not
    given are :func:`default_settings`."""
    return Sampler(vae, var, default_settings(var.cfg.vocab_size, **settings))(labels, seed=seed, batch=batch)


# -- zero-shot editing ----------------------------------------------------------------------------
EDIT_MODES = ("inpaint", "outpaint", "edit")


def box_keep_mask(box: Sequence[float], image_size: int, side: int, mode: str) -> np.ndarray:
    """(side, side) mask at the last token grid, 1 = keep the image's token, for a pixel box
    (x0, y0, x1, y1).  In-painting and editing regenerate the box; out-painting keeps only the box.
    The box is rounded to the grid as the official notebook's ``get_edit_mask``."""
    if mode not in EDIT_MODES:
        raise ValueError(f"mode must be one of {EDIT_MODES}, got {mode!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
        raise ValueError(f"the box (x0, y0, x1, y1) = {tuple(box)} must satisfy 0 ≤ x0 < x1 ≤ {image_size} and "
                         f"0 ≤ y0 < y1 ≤ {image_size} (pixels of the {image_size}×{image_size} model image)")
    inside = np.zeros((side, side), np.float32)
    grid = lambda v: round(v / image_size * side)
    inside[grid(y0):grid(y1), grid(x0):grid(x1)] = 1
    if not inside.any():
        cell = image_size / side
        raise ValueError(f"the box {tuple(box)} covers no token: tokens are {cell:g}×{cell:g}-pixel cells "
                         f"({side}×{side} grid) and the box is rounded to their borders; make it cover at least one "
                         f"whole cell")
    return inside if mode == "outpaint" else 1 - inside


def scale_keep_masks(keep: np.ndarray, patch_nums: Sequence[int], batch: int) -> list[jax.Array]:
    """The last-grid keep mask brought to every scale as the official notebook does: bilinear, then
    > 0.5; scales of at most 3 tokens always keep the image's tokens.  → per scale (B, pn²) bool."""
    keep = jnp.asarray(keep, jnp.float32)
    keep = jnp.broadcast_to(keep, (batch, *keep.shape[-2:]))
    out = []
    for pn in patch_nums:
        if pn * pn <= 3:
            m = jnp.ones((batch, pn, pn), bool)
        else:
            m = resize(keep[..., None], pn, "bilinear")[..., 0] > 0.5
        out.append(m.reshape(batch, pn * pn))
    return out


def edit(vae: VQVAE, var: VAR, images: jax.Array, keep: np.ndarray, labels=None, *, seed: int = 0,
         settings: SamplingSettings = SamplingSettings(), uint8: bool = True) -> SampleResult:
    """Zero-shot editing of ``images`` (B, H, W, 3) in [-1, 1]: the image's own tokens are kept where
    ``keep`` (last token grid, (side, side) or (B, side, side); see :func:`box_keep_mask`) says so,
    the rest is sampled.  ``labels`` None = unconditional."""
    B = images.shape[0]
    lo, hi = float(jnp.min(images)), float(jnp.max(images))
    if lo < -1.01 or hi > 1.01:  # a little slack for resampling overshoot
        raise ValueError(f"images must be in [-1, 1] (uint8 pixels: x / 127.5 - 1), got values in [{lo:g}, {hi:g}]")
    sampler = Sampler(vae, var, settings, uint8=uint8)
    labels = [-1] * B if labels is None else labels
    tokens = _image_tokens(sampler.graphdefs[0], sampler.states[0], images)
    masks = scale_keep_masks(keep, var.cfg.patch_nums, B)
    return sampler(labels, seed=seed, forced=[(t.astype(jnp.int32), m) for t, m in zip(tokens, masks)])
