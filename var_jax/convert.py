"""Official PyTorch state dicts ↔ var-jax models, for any configuration of the official constructors.

The core works on dicts of NumPy arrays keyed exactly as the official ``state_dict()``; ``.pth``
files are read and written without torch (``var_jax.pth``).  Every key is
accounted for: parameters are mapped, and buffers are either recomputed and checked
(``lvl_1L``, ``attn_bias_for_masking``, ``attn.zero_k_bias``) or carried (``ema_vocab_hit_SV``,
a training statistic, kept only when its number of scales matches, as the official loader does).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from var_jax import pth
from var_jax.config import PATCH_NUMS
from var_jax.models.state import abstract_model, assign_flat_state, flat_state
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE, VQVAEConfig

Arrays = Mapping[str, np.ndarray]


class CheckpointMismatch(ValueError):
    """An official state dict that does not fit the configuration it is loaded into."""


@dataclasses.dataclass
class Entry:
    """One of our parameters ↔ one or more official keys (several for a parameter stacked over layers)."""
    path: tuple
    keys: list[str]
    to_ours: Callable[[list[np.ndarray]], np.ndarray]
    to_official: Callable[[np.ndarray], list[np.ndarray]]


def _single(path, key, fwd, bwd) -> Entry:
    return Entry(path, [key], lambda a: fwd(a[0]), lambda x: [bwd(x)])


def _stacked(path, keys, fwd, bwd) -> Entry:
    return Entry(path, keys, lambda a: np.stack([fwd(x) for x in a]), lambda x: [bwd(x[i]) for i in range(len(keys))])


def _same(x):
    return x


def _t(x):
    return x.T


# -- VQVAE ------------------------------------------------------------------------------------------
def _phi_key(cfg: VQVAEConfig, k: int) -> str:
    if cfg.share_quant_resi == 0:
        return f"quantize.quant_resi.{k}"
    if cfg.share_quant_resi == 1:
        return "quantize.quant_resi.qresi"
    return f"quantize.quant_resi.qresi_ls.{k}"


def vae_entries(model: VQVAE) -> list[Entry]:
    """Every VQVAE parameter: our names mirror the official ones, so the map is a rename plus layout."""
    out = []
    for path in flat_state(model, nnx.Param):
        *mod, name = path
        if tuple(mod[:3]) == ("quantize", "quant_resi", "convs"):
            prefix = _phi_key(model.cfg, mod[3])
        else:
            prefix = ".".join(map(str, mod))
        if name == "kernel":  # conv (kh, kw, in, out) ↔ (out, in, kh, kw)
            out.append(_single(path, f"{prefix}.weight", lambda w: w.transpose(2, 3, 1, 0),
                               lambda k: k.transpose(3, 2, 0, 1)))
        elif name in ("scale", "embedding"):  # GroupNorm weight, codebook
            out.append(_single(path, f"{prefix}.weight", _same, _same))
        elif name == "bias":
            out.append(_single(path, f"{prefix}.bias", _same, _same))
        else:
            raise AssertionError(f"no official name for VQVAE parameter {path}")
    return out


# -- VAR --------------------------------------------------------------------------------------------
def var_entries(model: VAR) -> list[Entry]:
    cfg = model.cfg
    C, H, hd, d = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.depth

    def blocks(sub):
        return [f"blocks.{i}.{sub}" for i in range(d)]

    e = [
        _single(("word_embed", "kernel"), "word_embed.weight", _t, _t),
        _single(("word_embed", "bias"), "word_embed.bias", _same, _same),
        _single(("class_emb",), "class_emb.weight", _same, _same),
        _single(("pos_start",), "pos_start", lambda w: w[0], lambda x: x[None]),
        _single(("pos_1LC",), "pos_1LC", lambda w: w[0], lambda x: x[None]),
        _single(("lvl_embed",), "lvl_embed.weight", _same, _same),
        _single(("head_nm", "kernel"), "head_nm.ada_lin.1.weight", _t, _t),
        _single(("head_nm", "bias"), "head_nm.ada_lin.1.bias", _same, _same),
        _single(("head", "kernel"), "head.weight", _t, _t),
        _single(("head", "bias"), "head.bias", _same, _same),
        _stacked(("blocks", "attn", "mat_qkv"), blocks("attn.mat_qkv.weight"),
                 lambda w: w.T.reshape(C, 3, H, hd), lambda x: x.reshape(C, 3 * C).T),
        _stacked(("blocks", "attn", "q_bias"), blocks("attn.q_bias"),
                 lambda w: w.reshape(H, hd), lambda x: x.reshape(C)),
        _stacked(("blocks", "attn", "v_bias"), blocks("attn.v_bias"),
                 lambda w: w.reshape(H, hd), lambda x: x.reshape(C)),
        _stacked(("blocks", "attn", "proj", "kernel"), blocks("attn.proj.weight"),
                 lambda w: w.T.reshape(H, hd, C), lambda x: x.reshape(C, C).T),
        _stacked(("blocks", "attn", "proj", "bias"), blocks("attn.proj.bias"), _same, _same),
    ]
    for fc in ("fc1", "fc2"):
        e.append(_stacked(("blocks", "ffn", fc, "kernel"), blocks(f"ffn.{fc}.weight"), _t, _t))
        e.append(_stacked(("blocks", "ffn", fc, "bias"), blocks(f"ffn.{fc}.bias"), _same, _same))
    if cfg.attn_l2_norm:
        e.append(_stacked(("blocks", "attn", "scale_mul"), blocks("attn.scale_mul_1H11"),
                          lambda w: w.reshape(H), lambda x: x.reshape(1, H, 1, 1)))
    if cfg.shared_aln:
        e.append(_single(("shared_ada_lin", "kernel"), "shared_ada_lin.1.weight", _t, _t))
        e.append(_single(("shared_ada_lin", "bias"), "shared_ada_lin.1.bias", _same, _same))
        e.append(_stacked(("blocks", "ada_gss"), blocks("ada_gss"),
                          lambda w: w.reshape(6, C), lambda x: x.reshape(1, 1, 6, C)))
    else:
        e.append(_stacked(("blocks", "ada_lin", "kernel"), blocks("ada_lin.1.weight"), _t, _t))
        e.append(_stacked(("blocks", "ada_lin", "bias"), blocks("ada_lin.1.bias"), _same, _same))
    return e


def var_buffers(cfg: VARConfig) -> dict[str, np.ndarray]:
    """The official VAR buffers, recomputed from the configuration."""
    L = cfg.seq_len
    bias = np.where(cfg.attn_mask(), 0.0, -np.inf).astype(np.float32).reshape(1, 1, L, L)
    out = {"lvl_1L": cfg.level_ids().astype(np.int64)[None], "attn_bias_for_masking": bias}
    out.update({f"blocks.{i}.attn.zero_k_bias": np.zeros(cfg.embed_dim, np.float32) for i in range(cfg.depth)})
    return out


# -- loading and exporting --------------------------------------------------------------------------
def _official_shape(entry: Entry, shape) -> tuple:
    out = jax.eval_shape(entry.to_official, jax.ShapeDtypeStruct(shape, np.float32))
    return tuple(out[0].shape)


def _load(model, entries: list[Entry], sd: Arrays, buffers: Callable[[dict], list[str]], what: str):
    """Fill ``model`` (possibly abstract) from ``sd``; raise one error listing every problem."""
    pure = flat_state(model)
    known = {k for e in entries for k in e.keys}
    missing = [k for e in entries for k in e.keys if k not in sd]
    new, misshaped = {}, []
    for e in entries:
        if any(k not in sd for k in e.keys):
            continue
        want = tuple(pure[e.path].shape)
        try:
            value = e.to_ours([np.asarray(sd[k], np.float32) for k in e.keys])
        except ValueError:
            value = None
        if value is None or value.shape != want:
            expected = _official_shape(e, want)
            for k in e.keys:
                if tuple(sd[k].shape) != expected:
                    misshaped.append(f"{k}: checkpoint {tuple(sd[k].shape)}, this configuration expects {expected}")
            continue
        new[e.path] = value
    problems = buffers(new)
    unexpected = sorted(k for k in sd if k not in known and k not in _buffer_names(what, sd))
    report = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                         ("buffers that differ from the recomputed values", problems)):
        if items:
            report.append(f"  {len(items)} {title}:\n" + "\n".join(f"    {i}" for i in items[:40])
                          + ("\n    ..." if len(items) > 40 else ""))
    if report:
        raise CheckpointMismatch(f"the {what} state dict does not match the configuration:\n" + "\n".join(report)
                                 + f"\n  (check the configuration: {_describe(model)})")
    for path, leaf in pure.items():  # statistics the checkpoint does not carry start at zero
        if path not in new:
            new[path] = np.zeros(leaf.shape, leaf.dtype)
    assign_flat_state(model, new)
    return model


def load_state_dict(model, entries: list[Entry], sd: Arrays, what: str,
                    buffers: Callable[[dict], list[str]] = lambda _: []):
    """Fill ``model`` (possibly abstract) from an official-layout state dict ``sd`` through
    ``entries``; one error lists every missing, unexpected and mis-shaped key."""
    return _load(model, entries, sd, buffers, what)


def _buffer_names(what: str, sd: Arrays) -> set[str]:
    if what == "VQVAE":
        return {"quantize.ema_vocab_hit_SV"}
    return {k for k in sd if k in ("lvl_1L", "attn_bias_for_masking") or k.endswith(".attn.zero_k_bias")}


def _describe(model) -> str:
    return ", ".join(f"{k}={v}" for k, v in model.cfg.to_dict().items() if k not in ("dtype", "remat"))


def vae_from_official(sd: Arrays, cfg: VQVAEConfig) -> VQVAE:
    """A VQVAE with the weights of an official ``VQVAE.state_dict()``."""
    model = abstract_model(VQVAE, cfg)

    def buffers(new):
        hit = sd.get("quantize.ema_vocab_hit_SV")
        shape = (len(cfg.v_patch_nums), cfg.vocab_size)
        if hit is not None and tuple(hit.shape) == shape:  # else keep our zeros, as the official loader
            new[("quantize", "ema_vocab_hit_SV")] = np.asarray(hit, np.float32)
        return []

    return _load(model, vae_entries(model), sd, buffers, "VQVAE")


def var_from_official(sd: Arrays, cfg: VARConfig) -> VAR:
    """A VAR with the weights of an official ``VAR.state_dict()``."""
    model = abstract_model(VAR, cfg)

    def buffers(_):
        bad = []
        for k, ref in var_buffers(cfg).items():
            if k in sd and (sd[k].shape != ref.shape or not np.array_equal(np.asarray(sd[k]), ref)):
                bad.append(f"{k} {tuple(sd[k].shape)}" + (" (another patch_nums?)" if "zero_k" not in k else ""))
        return bad

    return _load(model, var_entries(model), sd, buffers, "VAR")


def _export(model, entries: list[Entry]) -> dict[str, np.ndarray]:
    pure = flat_state(model)
    out = {}
    for e in entries:
        for k, v in zip(e.keys, e.to_official(np.asarray(pure[e.path]))):
            out[k] = np.ascontiguousarray(v, np.float32)
    return out


def vae_to_official(model: VQVAE) -> dict[str, np.ndarray]:
    """The official ``VQVAE.state_dict()`` of our model (loads with ``strict=True``)."""
    out = _export(model, vae_entries(model))
    out["quantize.ema_vocab_hit_SV"] = np.asarray(model.quantize.ema_vocab_hit_SV[...], np.float32)
    return out


def var_to_official(model: VAR) -> dict[str, np.ndarray]:
    """The official ``VAR.state_dict()`` of our model, buffers included (loads with ``strict=True``)."""
    return {**_export(model, var_entries(model)), **var_buffers(model.cfg)}


# -- .pth files ------------------------------------------------------------------------------------
TRAINER_PARTS = ("var_wo_ddp", "vae_local")  # the models of an official trainer checkpoint (ar-ckpt*.pth)


def read_pth(path: str, part: str | None = None) -> dict[str, np.ndarray]:
    """A ``.pth`` file → {name: array}, without torch (arrays are read-only views mapped from the file).
    Accepts bare state dicts (the released files) and the official trainer checkpoints
    (``ar-ckpt*.pth``), from which ``part`` picks ``var_wo_ddp`` or ``vae_local``."""
    obj = pth.load(path)
    if isinstance(obj, dict) and isinstance(obj.get("trainer"), dict):
        trainer = obj["trainer"]
        if part is None or part not in trainer:
            have = [k for k in TRAINER_PARTS if k in trainer]
            raise ValueError(f"{path} is an official trainer checkpoint; it holds {have or 'no model'}"
                             + (f", not {part}" if part else ": say which model to read"))
        obj = trainer[part]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def write_pth(sd: Arrays, path: str) -> None:
    """{name: array} → a ``.pth`` state dict that the official code's ``torch.load`` reads (no torch needed)."""
    pth.save(OrderedDict((k, np.asarray(v)) for k, v in sd.items()), path)


# -- configurations read off a state dict ------------------------------------------------------------
def infer_var_config(sd: Arrays, **overrides) -> VARConfig:
    """The VAR configuration an official state dict was built with (the released models' training
    settings for what a state dict cannot show, e.g. drop-path)."""
    if "word_embed.weight" not in sd or "lvl_1L" not in sd:
        raise CheckpointMismatch("not an official VAR state dict: it has no word_embed.weight / lvl_1L")
    C, Cvae = sd["word_embed.weight"].shape
    depth = sum(1 for k in sd if k.endswith(".attn.mat_qkv.weight"))
    counts = np.bincount(np.asarray(sd["lvl_1L"]).reshape(-1))
    patch_nums = tuple(int(round(c ** 0.5)) for c in counts)
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    if l2:
        heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1]
    elif "num_heads" in overrides:
        heads = overrides["num_heads"]
    elif C % 64 == 0:  # no tensor shows the head count: take the released head size, 64
        heads = C // 64
    else:
        raise CheckpointMismatch(f"this VAR has no scale_mul_1H11 (attn_l2_norm off), so no tensor shows its number "
                                 f"of heads, and its width {C} is not a multiple of the released head size 64: "
                                 f"give num_heads (or a --config)")
    kw = dict(embed_dim=int(C), num_heads=int(heads), Cvae=int(Cvae), vocab_size=int(sd["head.weight"].shape[0]),
              num_classes=int(sd["class_emb.weight"].shape[0]) - 1, patch_nums=patch_nums, attn_l2_norm=l2,
              mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / C, shared_aln="shared_ada_lin.1.weight" in sd)
    return VARConfig.for_depth(depth, **{**kw, **overrides})


def infer_vae_config(sd: Arrays, v_patch_nums, **overrides) -> VQVAEConfig:
    """The VQVAE configuration an official state dict was built with.  The state dict does not hold
    the patch schedule (give the VAR's), ``quant_resi``'s ratio, ``beta`` or ``using_znorm``: those
    keep the official defaults unless overridden."""
    if "encoder.conv_in.weight" not in sd or "quantize.embedding.weight" not in sd:
        raise CheckpointMismatch("not an official VQVAE state dict: it has no encoder.conv_in.weight / "
                                 "quantize.embedding.weight")
    ch = int(sd["encoder.conv_in.weight"].shape[0])
    levels = sum(1 for k in sd if k.startswith("encoder.down.") and k.endswith(".block.0.conv1.weight"))
    ch_mult = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(levels))
    num_res_blocks = sum(1 for k in sd if k.startswith("encoder.down.0.block.") and k.endswith(".conv1.weight"))
    phis = [k for k in sd if k.startswith("quantize.quant_resi.") and k.endswith(".weight")]
    kw: dict = {}
    if not phis:
        kw["quant_resi"] = 0.0
    elif any(".qresi_ls." in k for k in phis):
        kw["share_quant_resi"] = len(phis)
    elif "quantize.quant_resi.qresi.weight" in phis:
        kw["share_quant_resi"] = 1
    else:
        kw["share_quant_resi"] = 0
        if len(phis) != len(v_patch_nums):
            kw["default_qresi_counts"] = len(phis)
    vocab, z = sd["quantize.embedding.weight"].shape
    kw.update(vocab_size=int(vocab), z_channels=int(z), ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
              quant_conv_ks=int(sd["quant_conv.weight"].shape[-1]), v_patch_nums=tuple(v_patch_nums),
              using_sa=f"encoder.down.{levels - 1}.attn.0.qkv.weight" in sd,
              using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd)
    return VQVAEConfig(**{**kw, **overrides})


def models_from_official(vae_sd: Arrays | None, var_sd: Arrays | None, *, vae_cfg: VQVAEConfig | None = None,
                         var_cfg: VARConfig | None = None, img_size: int = 256) -> tuple[VQVAE | None, VAR | None]:
    """The models of official state dicts (either may be None); configurations not given are read off
    the weights (a tokenizer without a VAR takes the released patch schedule of ``img_size``)."""
    if var_sd is not None and var_cfg is None:
        var_cfg = infer_var_config(var_sd)
    if vae_sd is not None and vae_cfg is None:
        vae_cfg = infer_vae_config(vae_sd, var_cfg.patch_nums if var_cfg else PATCH_NUMS[img_size])
    vae = vae_from_official(vae_sd, vae_cfg) if vae_sd is not None else None
    var = var_from_official(var_sd, var_cfg) if var_sd is not None else None
    return vae, var
