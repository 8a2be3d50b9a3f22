"""Image sets to evaluate: ADM-format ``.npz`` files (``arr_0``: uint8 (N, H, W, 3)), read in batches
without loading the whole array, and folders of image files."""
from __future__ import annotations

import contextlib
import os
import pathlib
import zipfile
from typing import Iterator

import numpy as np

from var_jax.data.transforms import load_rgb, resize_center_crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _existing(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return path


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names in an ``.npz`` file, without reading the arrays."""
    path = _existing(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz file (np.savez output)")
    with zipfile.ZipFile(path) as z:
        return [n[:-4] for n in z.namelist() if n.endswith(".npy")]


class NpzImages:
    """The images ``arr_0`` of an ``.npz``, checked from the array header (uint8, (N, H, W, 3)) and read
    in batches straight from the archive, so 50,000 images at 512 px never sit in memory at once."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0"):
        self.path = _existing(path)
        keys = npz_keys(self.path)
        if key not in keys:
            raise ValueError(f"{self.path} has no '{key}' array (it has {keys}); sample files hold images as "
                             f"{key}: uint8 (N, H, W, 3), as `var-jax sample --num N --npz` writes them")
        self.key = key
        with self._array_file() as f:
            self.shape, self.dtype = self._header(f)
        if self.dtype != np.uint8:
            raise ValueError(f"{self.path}: {key} has dtype {self.dtype}; images must be uint8 in [0, 255] "
                             f"(convert with np.clip(np.round(x * 255), 0, 255).astype(np.uint8) from [0, 1])")
        if len(self.shape) != 4 or self.shape[-1] != 3:
            raise ValueError(f"{self.path}: {key} has shape {self.shape}; images must be (N, H, W, 3) (NHWC, RGB)")

    @contextlib.contextmanager
    def _array_file(self):
        with zipfile.ZipFile(self.path) as z, z.open(f"{self.key}.npy") as f:
            yield f

    def _header(self, f) -> tuple[tuple[int, ...], np.dtype]:
        """Reads the .npy header, leaving ``f`` at the first byte of the data."""
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"{self.path}: {self.key} uses .npy format {version}; save it with np.savez")
        shape, fortran, dtype = readers[version](f)
        if fortran:
            raise ValueError(f"{self.path}: {self.key} is stored in Fortran order; save it C-contiguous")
        return tuple(shape), dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        per_image = int(np.prod(self.shape[1:]))
        with self._array_file() as f:
            self._header(f)
            for start in range(0, len(self), batch_size):
                n = min(batch_size, len(self) - start)
                data = f.read(n * per_image)
                if len(data) != n * per_image:
                    raise ValueError(f"{self.path}: {self.key} ends early (truncated file?)")
                yield np.frombuffer(data, np.uint8).reshape(n, *self.shape[1:])


class FolderImages:
    """Every image file under a folder (recursively, sorted by path) as uint8 RGB; images that are not
    ``size``×``size`` are resized and centre-cropped as VAR's evaluation transform does."""

    def __init__(self, folder: str | os.PathLike, size: int):
        self.folder = _existing(folder)
        if not self.folder.is_dir():
            raise ValueError(f"{self.folder} is not a folder of images")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.folder}")
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, path: pathlib.Path) -> np.ndarray:
        img = load_rgb(str(path))
        if img.size != (self.size, self.size):
            img = resize_center_crop(img, self.size)
        return np.asarray(img, np.uint8)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.files), batch_size):
            yield np.stack([self._image(p) for p in self.files[start:start + batch_size]])
