"""The multi-scale VQVAE tokenizer: a VQGAN-style Encoder/Decoder around the residual quantizer.

Layout is NHWC.  Module and attribute names follow the official state dict
(``encoder.down.0.block.1.conv2``, ``decoder.up.4.attn.2.qkv``, ...), so conversion is a
mechanical rename plus layout transposes (see ``var_jax.convert``).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from var_jax.models.quant import MultiScaleQuantizer, PatchNum, patch_hw
from var_jax.ops.conv import conv


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """Arguments of the official ``VQVAE`` constructor, with its defaults (the released tokenizer
    differs only in ``ch=160``), plus its Encoder/Decoder's ``ch_mult``, ``num_res_blocks`` and
    attention switches, and a compute dtype."""
    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    v_patch_nums: tuple[PatchNum, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    using_sa: bool = True
    using_mid_sa: bool = True
    in_channels: int = 3
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "v_patch_nums", tuple(
            pn if isinstance(pn, int) else tuple(pn) for pn in self.v_patch_nums))
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % 32 for w in widths):
            raise ValueError(f"GroupNorm uses 32 groups, so every width ch·ch_mult must be a multiple of 32; "
                             f"got ch={self.ch}, ch_mult={self.ch_mult} (widths {widths})")
        if self.quant_conv_ks % 2 != 1:
            raise ValueError(f"quant_conv_ks must be odd (same-size convolution), got {self.quant_conv_ks}")
        if self.share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be 0 (one Phi per scale), 1 (shared) or K > 1, "
                             f"got {self.share_quant_resi}")
        if len(self.v_patch_nums) < 2:
            raise ValueError(f"v_patch_nums needs at least 2 scales, got {self.v_patch_nums}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def latent_hw(self) -> tuple[int, int]:
        return patch_hw(self.v_patch_nums[-1])

    def image_size(self) -> int:
        """The square image size whose latent is the last scale."""
        return self.latent_hw()[0] * self.downsample

    @classmethod
    def from_dict(cls, d: dict) -> "VQVAEConfig":
        return config_from_dict(cls, d, ignore=("test_mode",))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def config_from_dict(cls, d: dict, ignore: Sequence[str] = ()):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - set(ignore))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(names)}")
    return cls(**{k: v for k, v in d.items() if k in names})


def _norm(channels: int, dtype, rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(channels, num_groups=32, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


def _conv(cin: int, cout: int, k: int, dtype, rngs, **kw) -> nnx.Conv:
    kw.setdefault("padding", k // 2)
    return nnx.Conv(cin, cout, (k, k), dtype=dtype, rngs=rngs, conv_general_dilated=conv, **kw)


class ResnetBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, dropout: float, dtype, rngs: nnx.Rngs):
        self.norm1 = _norm(cin, dtype, rngs)
        self.conv1 = _conv(cin, cout, 3, dtype, rngs)
        self.norm2 = _norm(cout, dtype, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 1e-6 else None
        self.conv2 = _conv(cout, cout, 3, dtype, rngs)
        self.nin_shortcut = _conv(cin, cout, 1, dtype, rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = nnx.silu(self.norm2(h))
        if self.dropout is not None:
            h = self.dropout(h)
        h = self.conv2(h)
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H·W positions, with a residual."""

    def __init__(self, channels: int, dtype, rngs: nnx.Rngs):
        self.norm = _norm(channels, dtype, rngs)
        self.qkv = _conv(channels, 3 * channels, 1, dtype, rngs)
        self.proj_out = _conv(channels, channels, 1, dtype, rngs)

    def __call__(self, x):
        B, H, W, C = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(B, H * W, 3 * C), 3, axis=-1)
        w = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) * C ** -0.5, axis=-1)
        h = jnp.einsum("bqk,bkc->bqc", w, v).reshape(B, H, W, C)
        return x + self.proj_out(h)


class Downsample(nnx.Module):
    """Zero-pad right and bottom by one, then a stride-2 3×3 convolution (asymmetric, as VQGAN)."""

    def __init__(self, channels: int, dtype, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, dtype, rngs, strides=2, padding=((0, 1), (0, 1)))

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int, dtype, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, dtype, rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution of the encoder (``down.i``) or decoder (``up.i``)."""

    def __init__(self, cin: int, cout: int, num_blocks: int, with_attn: bool, resample, dropout, dtype, rngs):
        self.block = nnx.List([ResnetBlock(cin if j == 0 else cout, cout, dropout, dtype, rngs)
                               for j in range(num_blocks)])
        self.attn = nnx.List([AttnBlock(cout, dtype, rngs) for _ in range(num_blocks)] if with_attn else [])
        if resample == "down":
            self.downsample = Downsample(cout, dtype, rngs)
        elif resample == "up":
            self.upsample = Upsample(cout, dtype, rngs)

    def __call__(self, x):
        for j, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Middle(nnx.Module):
    def __init__(self, channels: int, with_attn: bool, dropout, dtype, rngs):
        self.block_1 = ResnetBlock(channels, channels, dropout, dtype, rngs)
        self.attn_1 = AttnBlock(channels, dtype, rngs) if with_attn else None
        self.block_2 = ResnetBlock(channels, channels, dropout, dtype, rngs)

    def __call__(self, x):
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Encoder(nnx.Module):
    def __init__(self, cfg: VQVAEConfig, dtype, rngs: nnx.Rngs):
        n = len(cfg.ch_mult)
        in_mult = (1,) + cfg.ch_mult
        self.conv_in = _conv(cfg.in_channels, cfg.ch, 3, dtype, rngs)
        self.down = nnx.List([
            Level(cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks, cfg.using_sa and i == n - 1,
                  "down" if i != n - 1 else None, cfg.dropout, dtype, rngs)
            for i in range(n)])
        top = cfg.ch * cfg.ch_mult[-1]
        self.mid = Middle(top, cfg.using_mid_sa, cfg.dropout, dtype, rngs)
        self.norm_out = _norm(top, dtype, rngs)
        self.conv_out = _conv(top, cfg.z_channels, 3, dtype, rngs)

    def __call__(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(nnx.silu(self.norm_out(self.mid(h))))


class Decoder(nnx.Module):
    def __init__(self, cfg: VQVAEConfig, dtype, rngs: nnx.Rngs):
        n = len(cfg.ch_mult)
        top = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = _conv(cfg.z_channels, top, 3, dtype, rngs)
        self.mid = Middle(top, cfg.using_mid_sa, cfg.dropout, dtype, rngs)
        # up[i] works at the resolution of encoder level i; it runs from i = n-1 down to 0.
        widths_in = [cfg.ch * cfg.ch_mult[min(i + 1, n - 1)] for i in range(n)]
        self.up = nnx.List([
            Level(widths_in[i], cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1, cfg.using_sa and i == n - 1,
                  "up" if i != 0 else None, cfg.dropout, dtype, rngs)
            for i in range(n)])
        self.norm_out = _norm(cfg.ch * cfg.ch_mult[0], dtype, rngs)
        self.conv_out = _conv(cfg.ch * cfg.ch_mult[0], cfg.in_channels, 3, dtype, rngs)

    def __call__(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class VQVAE(nnx.Module):
    """Images (B, H, W, 3) in [-1, 1] ↔ multi-scale token maps."""

    def __init__(self, cfg: VQVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.encoder = Encoder(cfg, dtype, rngs)
        self.decoder = Decoder(cfg, dtype, rngs)
        self.quantize = MultiScaleQuantizer(
            cfg.vocab_size, cfg.z_channels, cfg.v_patch_nums, beta=cfg.beta, using_znorm=cfg.using_znorm,
            quant_resi=cfg.quant_resi, share_quant_resi=cfg.share_quant_resi,
            default_qresi_counts=cfg.default_qresi_counts, dtype=dtype, rngs=rngs)
        self.quant_conv = _conv(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, dtype, rngs)
        self.post_quant_conv = _conv(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, dtype, rngs)

    def _check_image(self, img: jax.Array) -> None:
        want = self.cfg.image_size()
        if img.ndim != 4 or img.shape[1:] != (want, want, self.cfg.in_channels):
            raise ValueError(f"expected images of shape (B, {want}, {want}, {self.cfg.in_channels}) in [-1, 1] "
                             f"(NHWC) for this tokenizer, got {tuple(img.shape)}")

    def encode_latent(self, img: jax.Array) -> jax.Array:
        """``quant_conv(encoder(img))``: the continuous latent f (B, h, w, Cvae)."""
        self._check_image(img)
        return self.quant_conv(self.encoder(img)).astype(jnp.float32)

    def img_to_idx(self, img: jax.Array, patch_nums=None) -> list[jax.Array]:
        """Image → per-scale token maps, each (B, pn²) row-major."""
        return self.quantize.encode(self.encode_latent(img), patch_nums)

    def img_to_fhats(self, img: jax.Array, patch_nums=None) -> list[jax.Array]:
        """Image → cumulative f̂ after each scale, each (B, h, w, Cvae)."""
        return self.quantize.encode(self.encode_latent(img), patch_nums, to_fhat=True)

    def fhat_to_img(self, f_hat: jax.Array) -> jax.Array:
        """f̂ → image in [-1, 1] (decoder output clamped)."""
        return jnp.clip(self.decode_unclamped(f_hat), -1.0, 1.0)

    def decode_unclamped(self, f_hat: jax.Array) -> jax.Array:
        return self.decoder(self.post_quant_conv(f_hat)).astype(jnp.float32)

    def idx_to_img(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """Per-scale token maps → image in [-1, 1]."""
        return self.fhat_to_img(self.quantize.idx_to_fhat(idx_list, last_one=True))

    def img_to_reconstructed(self, img: jax.Array, *, last_one: bool = False):
        """Image → its reconstruction after each scale (coarse to fine), or only the last."""
        fhats = self.img_to_fhats(img)
        if last_one:
            return self.fhat_to_img(fhats[-1])
        return [self.fhat_to_img(f) for f in fhats]

    def __call__(self, img: jax.Array):
        """Training forward: (reconstruction, unclamped; VQ loss; per-scale code hits (SN, V))."""
        f_hat_st, vq_loss, hits = self.quantize(self.encode_latent(img))
        return self.decode_unclamped(f_hat_st), vq_loss, hits
