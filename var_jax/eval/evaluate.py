"""FID, IS, precision and recall of a sample file against a reference: the ``var-jax eval`` command.

The reference is an ADM reference batch (``VIRTUAL_imagenet256_labeled.npz``: stored ``mu`` and
``sigma`` give FID directly, and its ``arr_0`` images give the features for precision/recall), an
``.npz`` written by ``save_reference`` (``mu``, ``sigma`` and the ``pool_3`` features, so nothing is
recomputed), or a folder of real images.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings

import jax
import numpy as np

from var_jax.eval.features import InceptionFeatures
from var_jax.eval.image_sets import FolderImages, NpzImages, npz_keys
from var_jax.eval.inception import POOL_DIM
from var_jax.eval.metrics import (GaussianStats, frechet_distance, gaussian_stats, inception_score,
                                  precision_recall, softmax)

POOL_KEY = "pool_3"  # the graph's name for the 2048-d features


@dataclasses.dataclass
class Reference:
    stats: GaussianStats
    features: np.ndarray | None  # (N, 2048), None when the file holds statistics only


def _reference_from_features(pool: np.ndarray) -> Reference:
    return Reference(gaussian_stats(pool), pool)


def load_reference(ref: str | os.PathLike, extractor: InceptionFeatures, image_size: int) -> Reference:
    """Statistics and features of a reference ``.npz`` or folder (folder images are brought to
    ``image_size``, the samples' size)."""
    path = pathlib.Path(ref)
    if path.is_dir():
        images = FolderImages(path, image_size)
        feats = extractor.of_batches(images.batches(extractor.batch_size), len(images), "reference features")
        return _reference_from_features(feats.pool)
    keys = npz_keys(path)
    with np.load(path) as f:
        stored = GaussianStats(f["mu"], f["sigma"]) if {"mu", "sigma"} <= set(keys) else None
        pool = np.asarray(f[POOL_KEY], np.float32) if POOL_KEY in keys else None
    if stored is not None and stored.mu.shape != (POOL_DIM,):
        raise ValueError(f"{path}: mu has shape {stored.mu.shape}; FID statistics are of the ({POOL_DIM},) pool features")
    if pool is not None and (pool.ndim != 2 or pool.shape[1] != POOL_DIM):
        raise ValueError(f"{path}: {POOL_KEY} has shape {pool.shape}; expected pool features (N, {POOL_DIM})")
    if pool is None and "arr_0" in keys:
        images = NpzImages(path)
        pool = extractor.of_batches(images.batches(extractor.batch_size), len(images), "reference features").pool
    if pool is None and stored is None:
        raise ValueError(f"{path} holds no reference: it needs mu and sigma, {POOL_KEY} features or arr_0 images "
                         f"(it has {keys})")
    return Reference(stored if stored is not None else gaussian_stats(pool), pool)


def save_reference(reference: Reference, path: str | os.PathLike) -> None:
    """``mu``, ``sigma`` and the ``pool_3`` features as an ``.npz`` that ``load_reference`` reads back."""
    if reference.features is None:
        raise ValueError("this reference has statistics only; nothing new to save")
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, mu=reference.stats.mu, sigma=reference.stats.sigma, **{POOL_KEY: reference.features})
    os.replace(tmp, path)


def sample_images(path: str | os.PathLike) -> NpzImages:
    """The images of a sample file (``arr_0``, or ``images`` as the demo writes them), checked to be
    enough for the statistics."""
    images = NpzImages(path, "images" if "arr_0" not in npz_keys(path) and "images" in npz_keys(path) else "arr_0")
    if len(images) < 2:
        raise ValueError(f"{path} holds {len(images)} image(s); FID needs at least 2 (the protocol uses 50,000)")
    return images


class EvaluationWarning(UserWarning):
    """Metrics computed, but from inputs that make them unreliable."""


def statistics_warnings(num_samples: int, samples: GaussianStats, reference: GaussianStats) -> list[str]:
    """Why FID and IS of these inputs should not be trusted (empty when nothing is wrong)."""
    out = []
    dim = len(samples.mu)
    if num_samples < dim:
        out.append(f"only {num_samples} samples: with fewer than {dim:,} (the feature dimension) their covariance is "
                   f"singular and FID is biased; the protocol uses 50,000")
    for what, st in (("sample", samples), ("reference", reference)):
        if np.trace(st.sigma) <= 1e-6 * max(float(np.sum(st.mu ** 2)), 1e-12):
            out.append(f"the {what} features are (nearly) all the same (the images are alike or blank): FID and IS "
                       f"of such a set mean nothing")
    return out


def evaluate(samples: str | os.PathLike, ref: str | os.PathLike, extractor: InceptionFeatures, *,
             save_ref: str | os.PathLike | None = None) -> dict:
    """The metrics of ``samples`` (ADM-format ``.npz``) against ``ref``, as a JSON-ready dict; a metric
    the inputs cannot give (IS without classifier weights, precision/recall against statistics only)
    is None."""
    images = sample_images(samples)
    feats = extractor.of_batches(images.batches(extractor.batch_size), len(images), "sample features")
    reference = load_reference(ref, extractor, images.image_size[0])
    if save_ref:
        save_reference(reference, save_ref)
    pr = (None, None) if reference.features is None else precision_recall(reference.features, feats.pool)
    stats = gaussian_stats(feats.pool)
    for message in statistics_warnings(len(images), stats, reference.stats):
        warnings.warn(message, EvaluationWarning, stacklevel=2)
    return {
        "FID": frechet_distance(stats, reference.stats),
        "IS": None if feats.logits is None else inception_score(softmax(feats.logits)),
        "precision": pr[0],
        "recall": pr[1],
        "num_samples": len(images),
        "num_reference": None if reference.features is None else len(reference.features),
        "samples": str(samples),
        "ref": str(ref),
    }


def evaluate_files(samples: str | os.PathLike, ref: str | os.PathLike, inception: str | os.PathLike | None, *,
                   batch: int = 64, save_inception: str | os.PathLike | None = None,
                   save_ref: str | os.PathLike | None = None) -> dict:
    """:func:`evaluate` from files (``var-jax eval``): the Inception weights in ``inception``
    (optionally saved again as ``.npz``), every device of this process on the mesh's data axis
    (``batch`` rounded up to a multiple of their number).  Inputs are checked before the weights are read."""
    from var_jax import parallel
    from var_jax.eval.inception_weights import PYTORCH_FID_URL, load_inception, save_weights
    if not inception:
        raise ValueError(f"give the Inception weights with --inception FILE (or VAR_JAX_INCEPTION=FILE): pytorch-fid's "
                         f"pt_inception-2015-12-05-6726825d.pth ({PYTORCH_FID_URL}; read without torch), a TorchScript "
                         f"export of the same network, or an .npz written by --save-inception")
    if batch <= 0:
        raise ValueError(f"--batch must be positive, got {batch}")
    sample_images(samples)
    if not pathlib.Path(ref).exists():
        raise FileNotFoundError(f"no such reference: {ref} (an ADM reference .npz or a folder of images)")
    model = load_inception(inception)
    if save_inception:
        save_weights(model, save_inception)
    mesh = parallel.make_mesh(None, jax.local_devices())
    extractor = InceptionFeatures(model, batch_size=-(-batch // mesh.size) * mesh.size, mesh=mesh)
    return evaluate(samples, ref, extractor, save_ref=save_ref)
