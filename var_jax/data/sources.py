"""Random-access image sources for the Grain pipelines.

Each source has ``len()`` and ``[i]`` returning ``{"image": ..., "label": int}``, where the image is
still undecoded where that is cheaper (a file path, encoded bytes) or already an RGB uint8 array;
``pipeline.decode`` turns any of these into a picture.

- :class:`ArrayImages`: in-memory arrays (the embedded sets);
- :class:`ImageFolder`: ``root/<class>/<file>`` trees, classes in sorted order;
- :class:`TfdsImages`: a prepared TensorFlow Datasets set read through ``tfds.data_source``
  (ArrayRecord files; TensorFlow is never imported, images stay encoded until the pipeline decodes them).
"""
from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np

from var_jax.data import embedded
from var_jax.data.splits import split_indices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ArrayImages:
    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] = ()):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.class_names = images, np.asarray(labels, np.int32), class_names

    @classmethod
    def embedded(cls, name: str, split: str) -> "ArrayImages":
        s = embedded.load(name, split)
        return cls(s.images, s.labels, s.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


class ImageFolder:
    """Files ``root/<class>/*`` with an image suffix (any case), class index = rank of the folder name.

    ``split`` picks the fixed held-out part ('heldout'), the rest ('train') or everything ('all'), for
    trees that have no separate validation folder.
    """

    def __init__(self, root: str | os.PathLike, split: str = "all"):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no image folder {self.root}: expected root/<class>/<image files>")
        self.class_names = tuple(sorted(d.name for d in self.root.iterdir() if d.is_dir()))
        files, labels = [], []
        for label, name in enumerate(self.class_names):
            for path in sorted((self.root / name).iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    files.append(str(path))
                    labels.append(label)
        if not files:
            raise ValueError(f"{self.root} holds no images: expected root/<class>/<file> with a suffix in "
                             f"{IMAGE_SUFFIXES}, found class folders {list(self.class_names)[:10]}")
        pick = split_indices(len(files), split)
        self.files = [files[i] for i in pick]
        self.labels = np.asarray(labels, np.int32)[pick]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.files[i], "label": int(self.labels[i])}


class TfdsImages:
    """A split of a prepared TFDS image set (e.g. ``imagenet2012``, ``train`` / ``validation``)."""

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None):
        import tensorflow_datasets as tfds  # reads ArrayRecord files without TensorFlow

        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                                            decoders={"image": tfds.decode.SkipDecoding()})
        except Exception as e:  # tfds raises many types for a set that is not prepared
            raise FileNotFoundError(
                f"cannot open the TFDS set {name!r} split {split!r} under data_dir={data_dir or '(tfds default)'}: "
                f"{e}. Prepare it first in ArrayRecord format (tfds build {name} --file_format=array_record; "
                f"ImageNet needs its archives placed by hand in the manual_dir)") from e
        self.name, self.split, self.class_names = name, split, ()

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        record = self._source[i]
        return {"image": bytes(record["image"]), "label": int(record["label"])}


def fingerprint(source) -> str:
    """A data set's identity, what token maps record of the images they were written from: the
    SHA-256 of an image folder's class names, relative file names and labels (not of the mount point,
    so the same tree elsewhere matches), of in-memory images and labels, or of a TFDS split's name
    and size; for any other random-access source, of its records (labels and images)."""
    digest = hashlib.sha256(type(source).__name__.encode())
    if isinstance(source, ImageFolder):
        digest.update(repr(source.class_names).encode())
        for file, label in zip(source.files, source.labels):
            digest.update(f"{pathlib.Path(file).relative_to(source.root).as_posix()}:{int(label)};".encode())
    elif isinstance(source, ArrayImages):
        digest.update(np.ascontiguousarray(source.images).tobytes())
        digest.update(np.ascontiguousarray(source.labels).tobytes())
    elif isinstance(source, TfdsImages):
        digest.update(f"{source.name}:{source.split}:{len(source)}".encode())
    else:
        for i in range(len(source)):
            record = source[i]
            image = record["image"]
            digest.update(f"{int(record['label'])};".encode())
            digest.update(np.ascontiguousarray(image).tobytes() if isinstance(image, np.ndarray) else
                          bytes(image) if isinstance(image, (bytes, bytearray)) else str(image).encode())
    return digest.hexdigest()
