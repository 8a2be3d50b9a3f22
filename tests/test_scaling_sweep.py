"""The scaling-law sweep end to end: a tiny random tokenizer, three tiny VARs trained a few steps on
64 embedded digits at 8×8, held-out metrics on 16 others, the results file, the fits, resumption,
and bad sweep settings."""
from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from var_jax import cli
from var_jax.checkpoint import load_pretrained, save_pretrained
from var_jax.data import pipeline
from var_jax.data.sources import ArrayImages
from var_jax.data.transforms import to_model_range
from var_jax.data.tokenized import write_tokens
from var_jax.eval.scaling import METRICS
from var_jax.eval.token_metrics import evaluate_tokens
from var_jax.models.flops import train_flops_per_image
from var_jax.models.state import init_model
from var_jax.models.vqvae import VQVAE, VQVAEConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "scaling_digits.py")
TINY_VAE = VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=(1, 2, 4))
STEPS, BATCH, HELDOUT = 3, 8, 16


def tiny_sweep(tokenizer: pathlib.Path, workdir: pathlib.Path, *extra: str) -> list[str]:
    return ["scaling-sweep", "--config", CONFIG, "--workdir", str(workdir), f"--config.tokenizer={tokenizer}",
            f"--config.data.tokens={tokenizer.parent / 'tokens'}",
            "--config.sweep.depths=(1,2,3)", "--config.sweep.width_per_depth=8", "--config.sweep.head_dim=8",
            f"--config.sweep.steps={STEPS}", "--config.sweep.crops=1", f"--config.train.batch_size={BATCH}",
            f"--config.eval.num_images={HELDOUT}", "--config.eval.batch_size=8", "--config.data.num_threads=1",
            *extra]


def test_sweep_trains_measures_fits_and_resumes(tmp_path, capsys, monkeypatch):
    vae = init_model(VQVAE, TINY_VAE, seed=0)
    tokenizer = save_pretrained(tmp_path / "tokenizer", vae=vae)
    # token maps of 64 digits written beforehand (data.tokens): tokenizing all 4,500 costs a minute
    digits = ArrayImages.embedded("digits", "train")
    write_tokens(vae, ArrayImages(digits.images[:64], digits.labels[:64]), tmp_path / "tokens", image_size=8,
                 crops=1, seed=0, batch_size=64, num_threads=1)
    workdir = tmp_path / "sweep"
    assert cli.main(tiny_sweep(tokenizer, workdir)) == 0
    printed = capsys.readouterr().out.splitlines()
    fit = json.loads(next(line for line in printed if line.startswith("{")))

    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert [r["depth"] for r in rows] == [1, 2, 3] and [r["width"] for r in rows] == [8, 16, 24]
    assert [r["heads"] for r in rows] == [1, 2, 3]
    assert all(r["steps"] == STEPS and r["images_seen"] == STEPS * BATCH for r in rows)
    params = [r["params"] for r in rows]
    assert params == sorted(params) and len(set(params)) == 3
    for r in rows:
        model = load_pretrained(workdir / f"d{r['depth']}" / "model").var
        # the count is the exported model's, and the compute is its training FLOPs × images seen
        assert r["params"] == sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert r["compute_flops"] == pytest.approx(train_flops_per_image(model.cfg) * STEPS * BATCH, rel=1e-12)
        for m in METRICS:
            assert math.isfinite(r[m]) and r[m] > 0
        # a barely trained model on 16-code tokens: losses near ln 16 = 2.77, errors below 100%
        assert r["L_avg"] < 2 * math.log(16) and r["Err_avg"] <= 100
    # the metrics are the held-out teacher-forced ones of var_jax.eval.token_metrics, on the first
    # HELDOUT held-out digits; float32 sums of ~5,000 terms in a different order: 1e-5 relative
    var = load_pretrained(workdir / "d2" / "model").var
    heldout = ArrayImages.embedded("digits", "heldout")
    batches = [(to_model_range(b["image"]), b["label"]) for b in
               pipeline.eval_batches(heldout, image_size=8, batch_size=8, num_images=HELDOUT, num_threads=1)]
    direct = evaluate_tokens(vae, var, batches)
    for m in METRICS:
        assert rows[1][m] == pytest.approx(direct[m], rel=1e-5), m

    assert fit["num_models"] == 3 and fit["trained"] == [1, 2, 3]
    assert {(f["x"], f["metric"]) for f in fit["fits"]} == {(x, m) for x in ("params", "compute") for m in METRICS}
    assert all(f["n"] == 3 for f in fit["fits"])
    assert (workdir / "scaling.png").stat().st_size > 0

    # again: every depth is in results.jsonl, so nothing is built or trained and the file is unchanged
    before = (workdir / "results.jsonl").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished depth was trained again")
    monkeypatch.setattr("var_jax.train.var_trainer.VARTrainer.__init__", no_training)
    assert cli.main(tiny_sweep(tokenizer, workdir)) == 0
    again = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    assert again["trained"] == [] and again["num_models"] == 3
    assert (workdir / "results.jsonl").read_bytes() == before

    # the same directory with another width for the same depths is refused, and nothing is lost
    assert cli.main(tiny_sweep(tokenizer, workdir, "--config.sweep.width_per_depth=16")) == 2
    assert "depth 1 trained as" in capsys.readouterr().err
    assert (workdir / "results.jsonl").read_bytes() == before


@pytest.mark.parametrize("override, message", [
    ("--config.sweep.depths=(1,2)", "at least 3 models"),
    ("--config.sweep.depths=(1,1,2)", "distinct positive integers"),
    ("--config.sweep.head_dim=12", "not a multiple of sweep.head_dim=12"),
    ("--config.train.steps=50", "--config.sweep.steps=N"),
    ("--config.sweep.tokenizer_overrides=('steps',)", "'key=value' strings"),
])
def test_bad_sweep_settings_are_refused_before_anything_runs(tmp_path, capsys, override, message):
    assert cli.main(["scaling-sweep", "--config", CONFIG, "--workdir", str(tmp_path / "w"), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
