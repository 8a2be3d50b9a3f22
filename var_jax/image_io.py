"""Writing images: PNG files and labelled grids."""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """(H, W, 3) uint8 → PNG, written atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Fail before any work if ``path`` cannot be written as a file (a directory, or a folder that
    cannot be created or written)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name, e.g. {path / 'out.png'}")
    _check_writable_dir(path.parent, flag, path)


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """Fail before any work if ``path`` cannot be used as a directory of outputs."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a directory (it is created if needed)")
    _check_writable_dir(path, flag, path)


def _check_writable_dir(folder: pathlib.Path, flag: str, path: pathlib.Path) -> None:
    existing = folder.absolute()
    while not existing.exists():  # the nearest folder that exists must let us create the rest
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {existing} (permission denied or not a folder)")


def upscale(images: np.ndarray, min_side: int = 128) -> np.ndarray:
    """(N, H, W, 3) images enlarged by a whole factor (nearest pixel) to at least ``min_side``, so small
    images are visible in a grid."""
    factor = max(1, -(-min_side // images.shape[1]))
    return images if factor == 1 else images.repeat(factor, axis=1).repeat(factor, axis=2)


def labelled_grid(rows: Sequence[np.ndarray], labels: Sequence[str], pad: int = 2, label_width: int = 0) -> np.ndarray:
    """Rows of images (each (n, H, W, 3) uint8) → one (H', W', 3) uint8 picture, each row captioned
    on its left with its label."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    label_width = label_width or max(40, 7 * max(len(s) for s in labels) + 8)
    canvas = Image.new("RGB", (label_width + cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (row, text) in enumerate(zip(rows, labels)):
        top = pad + i * (h + pad)
        draw.text((4, top + max(0, h // 2 - 6)), text, fill="black")
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(np.asarray(img, np.uint8)), (label_width + pad + j * (w + pad), top))
    return np.asarray(canvas)
