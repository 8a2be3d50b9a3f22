"""Image preprocessing as the official VAR: shorter side to round(1.125·size) with Lanczos, then a
crop of size×size (random for training, centre for evaluation), mapped to [-1, 1]."""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from PIL import Image

RESIZE_RATIO = 1.125


def load_rgb(file: str | os.PathLike | BinaryIO) -> Image.Image:
    """Open an image (a path or a binary file object) as RGB: grey, palette, CMYK and alpha images
    are converted (alpha over white), 16-bit grey scaled to 8 bits (PIL's own conversion clips it)."""
    try:
        img = Image.open(file)
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        name = file if isinstance(file, (str, os.PathLike)) else getattr(file, "name", "<image bytes>")
        raise ValueError(f"cannot read image {str(name)!r}: {e}") from e
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF)
        grey = np.asarray(img, np.float64) / 257.0
        return Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to round(1.125·size) with Lanczos (the official ``Resize`` before cropping)."""
    short = round(RESIZE_RATIO * size)
    w, h = img.size
    scale = short / min(w, h)
    return img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.LANCZOS)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The validation transform: shorter side to round(1.125·size) (Lanczos), centre crop size×size."""
    img = resize_shorter(img, size)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def resize_random_crop(img: Image.Image, size: int, rng: np.random.Generator, hflip: bool = False) -> Image.Image:
    """The training transform: shorter side to round(1.125·size) (Lanczos), a uniformly placed
    size×size crop, and optionally a horizontal flip with probability 1/2 (off in the official recipes)."""
    img = resize_shorter(img, size)
    w, h = img.size
    left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    img = img.crop((left, top, left + size, top + size))
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def to_model_range(images_uint8):
    """uint8 [0, 255] → float32 [-1, 1]; NumPy in, NumPy out; a JAX array (traced or not) stays one."""
    x = images_uint8 if hasattr(images_uint8, "astype") else np.asarray(images_uint8)
    return x.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] → uint8, rounding."""
    return np.clip(np.floor((np.asarray(images) + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)
