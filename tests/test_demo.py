"""The demo's pieces on tiny models: the coarse-to-fine picture, the judge's feature distances and
where a seeded run writes."""
from __future__ import annotations

import json
import pathlib

import numpy as np
from flax import nnx

from var_jax.demo import (SWEEP_SEED, Judge, SmallCNN, decode_every_scale, feature_distances, last_validation,
                          output_dir, selector_agreements)
from var_jax.models.state import init_model
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE
from var_jax.sample import Sampler, SamplingSettings


def test_pyramid_ends_in_the_sampled_image(tiny_vae, tiny_var):
    vae = init_model(VQVAE, tiny_vae(), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 4), init_adaln_gamma=0.5, init_head=1.0), seed=1)
    result = Sampler(vae, var, SamplingSettings(cfg=2.0, top_p=0.9))([0, 1, 2, 3], seed=3)
    pyramid = decode_every_scale(vae, result.tokens)
    assert [p.shape for p in pyramid] == [(4, 8, 8, 3)] * 3 and all(p.dtype == np.uint8 for p in pyramid)
    # Another program accumulates f̂ in another order: at most one uint8 step apart (measured: 0).
    assert np.abs(pyramid[-1].astype(int) - np.asarray(result.images, int)).max() <= 1
    assert not np.array_equal(pyramid[0], pyramid[-1])  # the coarse scales are a different, blurrier image


def test_selector_agreements_sample_every_setting_with_the_sweep_seeds(tiny_vae, tiny_var):
    vae = init_model(VQVAE, tiny_vae(), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 4), init_adaln_gamma=0.5, init_head=1.0), seed=1)
    labels = np.array([0, 1, 2, 3, 4, 0], np.int32)
    seen = []

    def selector(images):  # a deterministic stand-in for the CNN: a class from the first pixel
        seen.append(images)
        return images[:, 0, 0, 0].astype(int) % 5

    rows = selector_agreements(vae, var, selector, (0.0, 3.0), (0.8, 0.0), labels, seed=2)
    assert [(r["cfg"], r["top_p"]) for r in rows] == [(0.0, 0.8), (0.0, 0.0), (3.0, 0.8), (3.0, 0.0)]
    for row, images in zip(rows, seen):
        settings = SamplingSettings(cfg=row["cfg"], top_p=row["top_p"])
        np.testing.assert_array_equal(images, Sampler(vae, var, settings)(labels, seed=SWEEP_SEED + 2).images)
        assert row["selector_agreement"] == np.mean(images[:, 0, 0, 0].astype(int) % 5 == labels)
    assert not all(np.array_equal(seen[0], other) for other in seen[1:])  # the settings change the samples


def test_feature_distances_of_the_reference_itself_are_perfect():
    rng = np.random.default_rng(0)
    heldout = rng.integers(0, 256, (40, 32, 32, 3), np.uint8)
    train = rng.integers(0, 256, (60, 28, 28, 3), np.uint8)
    judge = Judge(SmallCNN(10, nnx.Rngs(0)))
    predicted, features = judge(heldout)
    assert predicted.shape == (40,) and features.shape == (40, SmallCNN.FEATURES)
    out = feature_distances(judge, features, heldout, train)
    assert abs(out["samples"]["fid"]) < 1e-3  # float64 statistics of identical features
    assert out["samples"]["precision"] == out["samples"]["recall"] == 1.0
    baseline = out["real_training_images_40"]
    assert baseline["fid"] > 1e-3 and 0 <= baseline["precision"] <= 1 and 0 <= baseline["recall"] <= 1


def test_a_seeded_run_writes_next_to_the_default():
    base = pathlib.Path("outputs")
    assert output_dir("demo_digits", 0) == base / "demo"
    assert output_dir("demo_digits", 2) == base / "demo_seed2"
    assert output_dir("configs/demo_emoji.py", 1) == base / "demo_emoji_seed1"
    assert output_dir("demo_digits", 2, "elsewhere") == pathlib.Path("elsewhere")


def test_the_last_validation_is_read_from_the_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    assert last_validation(log) == {}  # no log yet
    rows = [{"step": 400, "val/L_mean": 3.0, "val/acc_mean": 20.0, "val/L_per_scale/1x1": 1.0},
            {"step": 450, "train/L_mean": 2.9},
            {"step": 800, "val/L_mean": 2.5, "val/acc_mean": 30.0, "val/L_per_scale/1x1": 0.9},
            {"step": 850, "train/L_mean": 2.4}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert last_validation(log) == {"step": 800, "L_mean": 2.5, "acc_mean": 30.0}
