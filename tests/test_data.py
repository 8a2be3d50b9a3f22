"""Input pipelines: determinism, resumable iterator state, bad images, image folders, preprocessing."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from PIL import Image

from var_jax.data import embedded, pipeline
from var_jax.data.sources import ArrayImages, ImageFolder
from var_jax.data.splits import split_indices
from var_jax.data.transforms import (load_rgb, resize_center_crop, resize_random_crop, resize_shorter,
                                     to_model_range, to_uint8)


def _digits(n: int = 64) -> ArrayImages:
    s = embedded.load("digits", "train")
    return ArrayImages(s.images[:n], s.labels[:n])


def _take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
               for x, y in zip(a, b, strict=True))


# -- training stream -----------------------------------------------------------------------------------------
def test_train_batches_deterministic_by_seed():
    src = _digits()
    make = lambda seed: iter(pipeline.train_batches(src, image_size=16, batch_size=8, seed=seed, num_threads=2))
    first, again, other = _take(make(0), 3), _take(make(0), 3), _take(make(1), 3)
    assert _same_batches(first, again)
    assert not _same_batches(first, other)
    b = first[0]
    assert b["image"].shape == (8, 16, 16, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and int(b["skipped"]) == 0


def test_train_batches_cover_every_image_once_per_epoch():
    # image i is uniformly grey level 5·i, so a crop of it still says which one it is
    src = ArrayImages(np.repeat(5 * np.arange(32, dtype=np.uint8), 20 * 20 * 3).reshape(32, 20, 20, 3),
                      np.zeros(32, np.int32))
    batches = _take(iter(pipeline.train_batches(src, image_size=16, batch_size=8, seed=3, num_threads=2)), 8)
    ids = [int(im[0, 0, 0]) // 5 for b in batches for im in b["image"]]
    first, second = ids[:32], ids[32:]
    assert sorted(first) == sorted(second) == list(range(32))  # each epoch is a permutation ...
    assert first != second                                     # ... and a new one


def test_resume_from_iterator_state_gives_the_same_next_batches():
    src = _digits()
    it = iter(pipeline.train_batches(src, image_size=16, batch_size=8, seed=0, num_threads=2))
    _take(it, 5)  # past the first epoch (64 images = 8 batches would be one; 5 batches is mid-epoch)
    state = it.get_state()
    expected = _take(it, 4)  # crosses into the second epoch
    resumed = iter(pipeline.train_batches(src, image_size=16, batch_size=8, seed=0, num_threads=2))
    resumed.set_state(state)
    assert _same_batches(_take(resumed, 4), expected)


# -- bad images ------------------------------------------------------------------------------------------------
def _write_folder(root):
    """Class 'a': five readable images in odd modes and two unreadable files; class 'b': two RGB images."""
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    Image.fromarray(np.full((20, 30, 3), (200, 10, 10), np.uint8)).save(a / "rgb.png")
    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(a / "grey.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(a / "grey16.png")
    Image.fromarray(np.zeros((20, 30, 4), np.uint8)).save(a / "transparent.png")  # alpha 0: over white
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(a / "cmyk.jpg")              # pure red in CMYK
    (a / "garbage.jpg").write_bytes(b"this is not an image")
    full = (root / "tmp.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(full)
    (a / "truncated.png").write_bytes(full.read_bytes()[:60])
    full.unlink()
    (a / "notes.txt").write_text("not an image suffix: ignored")
    for i in range(2):
        Image.fromarray(np.full((24, 24, 3), 30 * i, np.uint8)).save(b / f"{i}.JPG")


def test_folder_classes_and_files(tmp_path):
    _write_folder(tmp_path)
    folder = ImageFolder(tmp_path)
    assert folder.class_names == ("a", "b")
    assert len(folder) == 9  # 7 image-suffixed files in a (notes.txt skipped), 2 in b (upper-case suffix)
    assert [folder[i]["label"] for i in range(len(folder))] == [0] * 7 + [1] * 2


def test_official_train_val_layout_is_recognised(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    train, heldout = pipeline.sources(ml_collections.ConfigDict({"name": "folder", "root": str(tmp_path),
                                                                 "eval_root": ""}))
    assert (len(train), len(heldout)) == (6, 2)  # every file of each split, none shared
    assert train.class_names == heldout.class_names == ("n01", "n02")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    _write_folder(tmp_path)
    folder = ImageFolder(tmp_path)
    data = pipeline.eval_batches(folder, image_size=8, batch_size=7, num_images=7, num_threads=1)
    batches = list(data)
    assert len(batches) == 1  # 9 files, 2 unreadable: 7 readable ones, one batch
    assert int(batches[0]["skipped"]) == 2
    assert batches[0]["image"].shape == (7, 8, 8, 3)
    assert list(batches[0]["label"]) == [0] * 5 + [1] * 2


def test_non_rgb_images_are_converted(tmp_path):
    _write_folder(tmp_path)
    a = tmp_path / "a"
    for name, colour in (("rgb.png", (200, 10, 10)), ("grey.png", (77, 77, 77)),
                         ("grey16.png", (156, 156, 156)),       # 40000 / 257 = 155.6 → 156
                         ("transparent.png", (255, 255, 255))):  # fully transparent over white
        img = load_rgb(a / name)
        assert img.mode == "RGB", name
        assert tuple(np.asarray(img)[5, 5]) == colour, name
    cmyk = np.asarray(load_rgb(a / "cmyk.jpg")).astype(int)[5, 5]
    assert cmyk[0] > 240 and cmyk[1] < 15 and cmyk[2] < 15  # JPEG rounding: red within a few levels
    for name in ("garbage.jpg", "truncated.png"):
        with pytest.raises(ValueError, match="cannot read image"):
            load_rgb(a / name)


def test_skipped_count_survives_a_resume(tmp_path):
    _write_folder(tmp_path)
    folder = ImageFolder(tmp_path)
    it = iter(pipeline.train_batches(folder, image_size=8, batch_size=7, seed=0, num_threads=1))
    first = _take(it, 2)  # two epochs: each one meets both unreadable files
    assert int(first[-1]["skipped"]) == 4
    state = it.get_state()
    expected = next(it)
    resumed = iter(pipeline.train_batches(folder, image_size=8, batch_size=7, seed=0, num_threads=1))
    resumed.set_state(state)
    got = next(resumed)
    assert int(got["skipped"]) == int(expected["skipped"]) == 6
    assert np.array_equal(got["image"], expected["image"])


def test_a_set_of_only_unreadable_files_fails_instead_of_looping(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"{i}.png").write_bytes(b"not a png")
    it = iter(pipeline.train_batches(ImageFolder(tmp_path), image_size=8, batch_size=2, seed=0, num_threads=1))
    with pytest.raises(ValueError, match="3 images in a row could not be read"):
        next(it)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root/<class>"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolder(tmp_path)


# -- sources and splits ----------------------------------------------------------------------------------------
def test_embedded_heldout_is_fixed_and_disjoint():
    n = 5000
    held, train = split_indices(n, "heldout"), split_indices(n, "train")
    assert len(held) == 500 and len(train) == 4500
    assert not set(held) & set(train)
    assert np.array_equal(held, split_indices(n, "heldout"))
    digits = embedded.load("digits", "heldout")
    assert digits.images.shape == (500, 28, 28, 3) and digits.images.dtype == np.uint8


def test_sources_config_errors():
    from ml_collections import ConfigDict
    with pytest.raises(ValueError, match="needs data.root"):
        pipeline.sources(ConfigDict({"name": "folder", "root": "", "eval_root": ""}))
    with pytest.raises(ValueError, match="choose one of"):
        pipeline.sources(ConfigDict({"name": "cifar", "root": "", "eval_root": ""}))


def test_eval_batch_errors():
    src = _digits(32)
    with pytest.raises(ValueError, match="multiple of the evaluation batch size"):
        pipeline.eval_batches(src, image_size=16, batch_size=8, num_images=12)
    with pytest.raises(ValueError, match="the held-out set has 32"):
        pipeline.eval_batches(src, image_size=16, batch_size=8, num_images=40)


def test_eval_batches_are_the_first_images_centre_cropped():
    src = _digits(16)
    batches = list(pipeline.eval_batches(src, image_size=16, batch_size=8, num_images=16, num_threads=2))
    assert len(batches) == 2
    for k, b in enumerate(batches):
        for j in range(8):
            want = np.asarray(resize_center_crop(Image.fromarray(src.images[8 * k + j]), 16))
            assert np.array_equal(b["image"][j], want)
        assert np.array_equal(b["label"], src.labels[8 * k:8 * k + 8])


# -- preprocessing ---------------------------------------------------------------------------------------------
def test_resize_shorter_side_is_1_125_times_the_size():
    img = Image.new("RGB", (100, 50))
    assert resize_shorter(img, 32).size == (72, 36)       # round(1.125·32) = 36, aspect kept
    assert resize_shorter(Image.new("RGB", (50, 100)), 256).size == (288, 576)
    assert resize_center_crop(img, 32).size == (32, 32)
    assert resize_random_crop(img, 32, np.random.default_rng(0)).size == (32, 32)


def test_centre_crop_takes_the_middle():
    arr = np.zeros((36, 72, 3), np.uint8)  # already at the resized size: only the crop acts
    arr[:, 20:52] = 255                    # the middle 32 columns ((72 − 32) / 2 = 20 on each side)
    out = np.asarray(resize_center_crop(Image.fromarray(arr), 32))  # already at the resized size
    assert out.shape == (32, 32, 3)
    assert out.min() == 255                # one column off either way would bring in a black one


def test_random_crops_vary_and_stay_inside():
    arr = np.arange(36 * 36, dtype=np.uint32).reshape(36, 36)
    img = Image.fromarray((arr % 251).astype(np.uint8)).convert("RGB")
    rng = np.random.default_rng(0)
    crops = {np.asarray(resize_random_crop(img, 32, rng)).tobytes() for _ in range(20)}
    assert len(crops) > 5  # 25 possible placements


def test_model_range_round_trip():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = to_model_range(u8)
    assert x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(to_uint8(x), u8)
