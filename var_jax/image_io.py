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
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


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
