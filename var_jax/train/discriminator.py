"""The PatchGAN discriminator of VQGAN ("NLayerDiscriminator"): strided 4×4 convolutions with
batch normalisation and LeakyReLU(0.2), ending in one logit per overlapping image patch.

VQGAN trains with its discriminator in training mode, where each call normalises with the
statistics of its own batch; the running averages only serve its validation logs.  This module keeps
none, so a call updates no state and differentiates like a plain function."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

_CONV_INIT = jax.nn.initializers.normal(0.02)  # VQGAN's weights_init: N(0, 0.02) convs, N(1, 0.02) norm scales


def _norm_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    ch: int = 64          # width of the first layer; doubled per layer up to 8·ch
    num_layers: int = 3   # stride-2 layers; each halves the patch grid
    in_channels: int = 3
    dtype: str = "float32"

    def __post_init__(self):
        if self.num_layers < 1 or self.ch < 1:
            raise ValueError(f"the discriminator needs num_layers >= 1 and ch >= 1, got {self}")

    def check_image_size(self, size: int) -> None:
        """Each stride-2 layer halves the side and the two stride-1 4×4 layers take one pixel off each:
        the patch grid is size/2^L − 2, which must be at least 1."""
        if size % 2 ** self.num_layers or size // 2 ** self.num_layers - 2 < 1:
            raise ValueError(f"a {self.num_layers}-layer discriminator needs images whose side is a multiple of "
                             f"{2 ** self.num_layers} and at least {3 * 2 ** self.num_layers}, got {size}; "
                             f"lower loss.disc_layers")


class BatchNorm(nnx.Module):
    """Training-mode batch normalisation over (B, H, W): the biased batch variance, eps 1e-5."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.scale = nnx.Param(_norm_scale_init(rngs.params(), (channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(h - mean), axis=(0, 1, 2))
        return ((h - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale[...] + self.bias[...]).astype(x.dtype)


class PatchDiscriminator(nnx.Module):
    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        widths = [cfg.ch * min(2 ** n, 8) for n in range(cfg.num_layers + 1)]
        conv = lambda cin, cout, stride, bias: nnx.Conv(cin, cout, (4, 4), strides=stride, padding=1, use_bias=bias,
                                                        kernel_init=_CONV_INIT, dtype=dtype, rngs=rngs)
        self.conv_in = conv(cfg.in_channels, widths[0], 2, True)
        # layers 1..L-1 halve the grid; the last of these keeps it (stride 1), as in VQGAN
        self.convs = nnx.List([conv(widths[n - 1], widths[n], 2 if n < cfg.num_layers else 1, False)
                               for n in range(1, cfg.num_layers + 1)])
        self.norms = nnx.List([BatchNorm(w, rngs=rngs) for w in widths[1:]])
        self.conv_out = conv(widths[-1], 1, 1, True)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Images (B, H, W, 3) in [-1, 1] → patch logits (B, h, w), float32."""
        h = nnx.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = nnx.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h)[..., 0].astype(jnp.float32)
