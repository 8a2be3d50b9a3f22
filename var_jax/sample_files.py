"""Samples and edits written to files (``var-jax sample`` without ``--num``, ``var-jax edit``): a
labelled grid PNG with one row per class, optionally one PNG per image and the token maps as
``.npz``; an image file in-painted, out-painted or edited inside a box.  Evaluation sets (ADM
``.npz``) are :mod:`var_jax.sample_npz`."""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from var_jax.data.transforms import load_rgb, resize_center_crop, to_model_range
from var_jax.image_io import labelled_grid, save_png, upscale
from var_jax.sample import Sampler, SamplingSettings, box_keep_mask, edit


def parse_classes(text: str | None) -> list[int] | None:
    """'207,360,387' → [207, 360, 387]; None → None (the default classes); no ids at all is an error."""
    if text is None:
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        classes = []
    if not classes:
        raise ValueError(f"--classes takes comma-separated class ids, e.g. 207,360,387 (-1 = unconditional); "
                         f"got {text!r}")
    return classes


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' in pixels → a 4-tuple."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"--box takes x0,y0,x1,y1 in pixels, e.g. 64,64,192,192; got {text!r}")
    return box


def write_grid(sampler: Sampler, classes: Sequence[int] | None, out: str | os.PathLike, *, per_class: int = 4,
               batch: int | None = None, seed: int = 0, png_dir: str | os.PathLike | None = None,
               tokens: str | os.PathLike | None = None) -> np.ndarray:
    """``per_class`` samples of each class (default: 8 classes drawn with ``seed``) as a labelled grid
    PNG at ``out``, one row per class; optionally one PNG per image in ``png_dir`` and the token maps
    in ``tokens`` (.npz).  Chunk i of ``batch`` images uses seed + i.  Small images are drawn enlarged.
    Class ids are 0..num_classes-1, or -1 for unconditional.  Returns the images."""
    num_classes = sampler.num_classes
    if classes is None:  # distinct classes
        classes = sorted(np.random.default_rng(seed).choice(num_classes, size=min(8, num_classes), replace=False))
    bad = [c for c in classes if not -1 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes: class {bad[0]} is out of range for this model: use 0..{num_classes - 1}, or -1 "
                         f"for unconditional")
    labels = np.repeat(np.asarray(classes), per_class)
    batch = min(batch or len(labels), len(labels))
    print(f"compiling the sampler for batches of {batch} (once per batch size; the first batch waits for it)",
          file=sys.stderr)
    images, maps = [], []
    for i in tqdm(range(0, len(labels), batch), desc="sampling", unit="batch"):
        r = sampler(labels[i:i + batch], seed=seed + i)
        images.append(np.asarray(r.images))
        maps.append([np.asarray(t) for t in r.tokens])
    images = np.concatenate(images)
    rows = [upscale(images[i * per_class:(i + 1) * per_class]) for i in range(len(classes))]
    names = ["uncond" if c == -1 else str(c) for c in classes]
    save_png(labelled_grid(rows, names), out)
    print(f"wrote {out} ({len(labels)} images)")
    if png_dir:
        for n, (img, c) in enumerate(zip(images, labels)):
            save_png(img, pathlib.Path(png_dir) / f"{n:06d}_class{c}.png")
        print(f"wrote {len(images)} PNGs to {png_dir}")
    if tokens:
        per_scale = {f"tokens_{k}": np.concatenate([t[k] for t in maps]) for k in range(len(maps[0]))}
        np.savez(tokens, labels=labels, **per_scale)
        print(f"wrote {tokens}")
    return images


def edit_file(vae, var, image: str | os.PathLike, box: Sequence[float], out: str | os.PathLike, *,
              mode: str = "inpaint", cls: int | None = None, seed: int = 0, settings: SamplingSettings | None = None,
              tokens: str | os.PathLike | None = None) -> np.ndarray:
    """Regenerate the ``box`` (x0, y0, x1, y1 in pixels of the model-sized image) of the picture in
    ``image`` — ``inpaint``: the box, unconditional or of class ``cls``; ``outpaint``: everything
    outside it; ``edit``: the box with class ``cls`` — and write it to ``out``; optionally the
    result's and the image's token maps and the keep mask to ``tokens`` (.npz)."""
    if mode == "edit" and cls is None:
        raise ValueError("--mode edit regenerates the box with a class: give --class K")
    if cls is not None and not 0 <= cls < var.cfg.num_classes:
        raise ValueError(f"--class {cls} is out of range for this model: use 0..{var.cfg.num_classes - 1}")
    if not pathlib.Path(image).is_file():
        raise FileNotFoundError(f"no such image: {image}")
    size = vae.cfg.image_size()
    img = load_rgb(image)
    if img.size != (size, size):
        print(f"note: {image} is {img.size[0]}×{img.size[1]}; resized (shorter side to "
              f"{round(1.125 * size)}, Lanczos) and centre-cropped to {size}×{size} as the paper's preprocessing; "
              f"--box is in the coordinates of that {size}×{size} image")
        img = resize_center_crop(img, size)
    pixels = to_model_range(np.asarray(img))[None]
    keep = box_keep_mask(box, size, var.cfg.patch_nums[-1], mode)
    label = None if cls is None else [cls]
    kept = {"outpaint": "inside", "inpaint": "outside", "edit": "outside"}[mode]
    print(f"note: the tokens {kept} the box are the image's own, but the whole image is decoded from tokens, so the "
          f"kept part is the tokenizer's reconstruction (close to the input, not equal to it)", file=sys.stderr)
    print("compiling the encoder and the sampler (once per run)...", file=sys.stderr)
    result = edit(vae, var, jnp.asarray(pixels), keep, label, seed=seed, settings=settings or SamplingSettings())
    picture = np.asarray(result.images[0])
    save_png(picture, out)
    print(f"wrote {out}")
    if tokens:
        source = vae.img_to_idx(jnp.asarray(pixels))
        np.savez(tokens, keep=keep, **{f"tokens_{k}": np.asarray(t) for k, t in enumerate(result.tokens)},
                 **{f"source_{k}": np.asarray(t) for k, t in enumerate(source)})
        print(f"wrote {tokens}")
    return picture
