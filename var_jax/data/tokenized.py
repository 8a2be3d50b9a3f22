"""Pre-tokenized training data: the frozen tokenizer's token maps, written once, read back without
decoding an image.

``write_tokens`` decodes every training image, takes ``crops`` random crops of it (the official
training transform: shorter side to round(1.125·size), Lanczos, random crop, optional flip) and
stores their token sequences (all scales, row-major, coarse to fine) in ``DIR/tokens.npy``
(N, crops, L), with ``labels.npy``, ``valid.npy`` (False where the image could not be read) and
``meta.json`` (the tokenizer's configuration, image size, crops, seed, source).  It writes into a
hidden sibling directory, can be resumed after an interruption, and renames it to ``DIR`` when done.

``TokenSet`` reads such a directory (memory-mapped); ``train_token_batches`` is its Grain
pipeline: shuffled every epoch from the seed, one of the crops drawn per visit, sharded per
process, with a checkpointable iterator state like the image pipelines.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from var_jax.data.pipeline import decode
from var_jax.data.transforms import resize_random_crop, to_model_range

log = logging.getLogger(__name__)
TOKENS_FILE, LABELS_FILE, VALID_FILE, META_FILE = "tokens.npy", "labels.npy", "valid.npy", "meta.json"
_PROGRESS_FILE = "progress.json"


def _token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def comparable_vae_config(vae_cfg: dict) -> dict:
    """A tokenizer configuration without its compute dtype (which does not change the tokens' meaning)."""
    return {k: v for k, v in dict(vae_cfg).items() if k != "dtype"}


@dataclasses.dataclass(frozen=True)
class _Crops:
    """Decode one record and take ``crops`` random crops, seeded by (seed, index): the same crops
    whatever the thread or the resumption point."""
    size: int
    crops: int
    seed: int
    hflip: bool

    def __call__(self, index: int, record: dict) -> dict:
        try:
            img = decode(record["image"])
        except ValueError as e:
            return {"ok": False, "error": str(e), "label": np.int32(record["label"]),
                    "images": np.zeros((self.crops, self.size, self.size, 3), np.uint8)}
        rng = np.random.default_rng((self.seed, index))
        images = [np.asarray(resize_random_crop(img, self.size, rng, self.hflip), np.uint8) for _ in range(self.crops)]
        return {"ok": True, "label": np.int32(record["label"]), "images": np.stack(images)}


@functools.partial(jax.jit, static_argnames="graphdef")
def _encode(graphdef, state, images_uint8):
    vae = nnx.merge(graphdef, state)
    return jnp.concatenate(vae.img_to_idx(to_model_range(images_uint8)), axis=1)


def write_tokens(vae, source, directory: str | os.PathLike, *, image_size: int, crops: int = 1, seed: int = 0,
                 batch_size: int = 64, hflip: bool = False, num_threads: int = 4,
                 description: dict | None = None) -> pathlib.Path:
    """Tokenize every image of ``source`` (a random-access image source of ``var_jax.data.sources``)
    into ``directory``; returns it.  An existing complete directory written with the same settings
    is reused; one with other settings is an error (nothing is overwritten)."""
    if jax.process_count() > 1:
        raise ValueError("write the token maps from one process (they are read by every process afterwards)")
    if crops < 1 or batch_size < 1:
        raise ValueError(f"crops and batch_size must be at least 1, got crops={crops}, batch_size={batch_size}")
    if vae.cfg.image_size() != image_size:
        raise ValueError(f"the tokenizer takes {vae.cfg.image_size()}px images, but image_size={image_size}")
    target = pathlib.Path(directory).absolute()
    settings = {"vae": comparable_vae_config(vae.cfg.to_dict()), "image_size": int(image_size), "crops": int(crops),
                "seed": int(seed), "hflip": bool(hflip), "num_images": len(source), "source": description or {}}
    if (target / META_FILE).is_file():
        meta = json.loads((target / META_FILE).read_text())
        if {k: meta.get(k) for k in settings} != settings:
            raise FileExistsError(f"{target} holds token maps written with other settings "
                                  f"({_differences(meta, settings)}); choose another directory (nothing was changed)")
        print(f"{target} already holds these token maps; reusing them")
        return target
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not a token directory; choose another (nothing was changed)")

    partial = target.with_name(f".{target.name}.partial")
    seq_len = sum(int(pn) ** 2 for pn in vae.cfg.v_patch_nums)
    n = len(source)
    progress = json.loads((partial / _PROGRESS_FILE).read_text()) if (partial / _PROGRESS_FILE).is_file() else None
    if progress is None or progress["settings"] != settings:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        progress = {"settings": settings, "done": 0}
        np.lib.format.open_memmap(partial / TOKENS_FILE, "w+", _token_dtype(vae.cfg.vocab_size), (n, crops, seq_len))
        np.save(partial / LABELS_FILE, np.zeros(n, np.int32))
        np.save(partial / VALID_FILE, np.zeros(n, bool))
    tokens = np.load(partial / TOKENS_FILE, mmap_mode="r+")
    labels, valid = np.load(partial / LABELS_FILE), np.load(partial / VALID_FILE)

    graphdef, state = nnx.split(vae)
    n_dev = jax.local_device_count()
    per_call = -(-batch_size * crops // n_dev) * n_dev  # images per compiled call, a multiple of the devices
    start = int(progress["done"])
    ds = grain.MapDataset.source(source)[start:].map_with_index(_Crops(image_size, crops, seed, hflip))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
    records = iter(ds)
    errors = 0
    with tqdm(total=n, initial=start, desc="tokenizing", unit="img") as bar:
        for begin in range(start, n, batch_size):
            chunk = [next(records) for _ in range(min(batch_size, n - begin))]
            images = np.concatenate([r["images"] for r in chunk])
            padded = np.zeros((per_call, *images.shape[1:]), np.uint8)
            padded[:len(images)] = images
            idx = np.asarray(_encode(graphdef, state, padded))[:len(images)]
            end = begin + len(chunk)
            tokens[begin:end] = idx.reshape(len(chunk), crops, seq_len).astype(tokens.dtype)
            labels[begin:end] = [r["label"] for r in chunk]
            valid[begin:end] = [r["ok"] for r in chunk]
            for r in chunk:
                if not r["ok"]:
                    errors += 1
                    if errors <= 5:
                        log.warning("skipping an unreadable image: %s", r["error"])
            tokens.flush()
            np.save(partial / LABELS_FILE, labels)
            np.save(partial / VALID_FILE, valid)
            progress["done"] = end
            _write_json(partial / _PROGRESS_FILE, progress)
            bar.update(len(chunk))
    del tokens
    meta = {**settings, "seq_len": seq_len, "skipped_images": int(n - valid.sum())}
    _write_json(partial / META_FILE, meta)
    (partial / _PROGRESS_FILE).unlink()
    if target.exists():
        target.rmdir()
    partial.rename(target)
    print(f"wrote {target}: {int(valid.sum())} images × {crops} crop(s) × {seq_len} tokens"
          + (f" ({meta['skipped_images']} unreadable images skipped)" if meta["skipped_images"] else ""))
    return target


def _write_json(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _differences(saved: dict, wanted: dict) -> str:
    return "; ".join(f"{k}: {saved.get(k)!r} there, {wanted[k]!r} asked" for k in wanted if saved.get(k) != wanted[k])


class TokenSet:
    """A directory written by :func:`write_tokens`: ``[i]`` → {"tokens": (crops, L), "label": int}
    over the readable images."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        if not (self.directory / META_FILE).is_file():
            raise FileNotFoundError(f"{self.directory} holds no token maps (no {META_FILE}); write them with "
                                    f"`var-jax tokenize --config CFG --out {self.directory}`")
        self.meta = json.loads((self.directory / META_FILE).read_text())
        self.tokens = np.load(self.directory / TOKENS_FILE, mmap_mode="r")
        self.labels = np.load(self.directory / LABELS_FILE)
        self.indices = np.flatnonzero(np.load(self.directory / VALID_FILE))
        if not len(self.indices):
            raise ValueError(f"{self.directory} holds no readable images")

    @property
    def skipped(self) -> int:
        return int(self.meta.get("skipped_images", 0))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        return {"tokens": np.asarray(self.tokens[j]), "label": int(self.labels[j])}


@dataclasses.dataclass(frozen=True)
class _PickCrop:
    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        crop = int(rng.integers(0, record["tokens"].shape[0]))
        return {"tokens": record["tokens"][crop].astype(np.int32), "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class _WithSkipped:
    skipped: int

    def __call__(self, batch: dict) -> dict:
        return {**batch, "skipped": np.int64(self.skipped)}


def train_token_batches(tokens: TokenSet, *, batch_size: int, seed: int, num_threads: int = 4,
                        shard: tuple[int, int] | None = None) -> grain.IterDataset:
    """An endless stream of this process's batches (``batch_size`` is global): int32 ``tokens``
    (b, L), int32 ``label`` and ``skipped`` (unreadable images left out when writing).
    ``shard`` = (which, of how many) slices of the data this process reads (default: by process)."""
    which, count = shard or (jax.process_index(), jax.process_count())
    if batch_size % count:
        raise ValueError(f"the batch size {batch_size} must be a multiple of the number of input shards ({count})")
    ds = grain.MapDataset.source(tokens).seed(seed).shuffle().repeat()[which::count].random_map(_PickCrop())
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size))
    return ds.batch(batch_size // count, drop_remainder=True).map(_WithSkipped(tokens.skipped))
