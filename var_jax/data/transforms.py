"""Image preprocessing as the official VAR: shorter side to round(1.125·size) with Lanczos, then a
crop of size×size (centre for evaluation), mapped to [-1, 1]."""
from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_RATIO = 1.125


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (grey, palette and alpha images are converted; alpha over white)."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from e
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The validation transform: shorter side to round(1.125·size) (Lanczos), centre crop size×size."""
    short = round(RESIZE_RATIO * size)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.LANCZOS)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_model_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return np.asarray(images_uint8, np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] → uint8, rounding."""
    return np.clip(np.floor((np.asarray(images) + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)
