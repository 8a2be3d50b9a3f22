"""The training replay: the official trainer's recorded steps, run by var-jax's own compiled training
step (``python -m var_jax.parity`` on a training fixture), agree within the fixture's tolerances, and
a deliberately wrong decay mask, clip or schedule makes it fail."""
from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from var_jax import parity, training_replay
from var_jax.train import optim

TRAIN_FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "official_train_tiny.npz"
CHECKS = ("train/lr", "train/wd", "train/prog_si", "train/prog_wp", "train/loss", "train/grad_norm",
          "nonfinite_steps", "train/no_decay", "train/tokens", "train/after_step0", "train/final")


@pytest.fixture(scope="module")
def train_fx():
    with np.load(TRAIN_FIXTURE) as fx:
        yield fx


def _checks(fx, trajectory) -> dict[str, parity.Check]:
    checks = training_replay.compare(fx, trajectory)
    assert [c.name for c in checks] == list(CHECKS)
    return {c.name: c for c in checks}


def _replay(fx, **train_overrides) -> training_replay.Trajectory:
    with jax.default_matmul_precision("highest"):
        return training_replay.replay(fx, train_overrides)


@pytest.fixture(scope="module")
def trajectory(train_fx):
    return _replay(train_fx)


def test_replay_equals_the_official_trainer(train_fx, trajectory):
    replay = _checks(train_fx, trajectory)
    for c in replay.values():
        assert c.status == "ok", (c.name, c.error, c.tol, c.note)
    # the fixture README's tolerances
    assert replay["train/lr"].tol == replay["train/wd"].tol == 1e-6
    assert replay["train/loss"].tol == replay["train/grad_norm"].tol == 1e-4
    assert replay["train/final"].tol == pytest.approx(1e-3, rel=1e-2)  # + one ulp per element: negligible here
    for name in ("train/prog_si", "train/no_decay", "train/tokens", "nonfinite_steps"):
        assert replay[name].error == 0 and replay[name].tol == 0, name
    # measured on CPU: lr 9e-8, loss 2e-7, grad_norm 2e-7 relative; final weights 1.3e-6 of their movement
    assert replay["train/loss"].error < 1e-5 and replay["train/grad_norm"].error < 1e-5
    assert replay["train/final"].error < 1e-5
    # after one step the block weights have moved a few ulps only: there the ulp floor sets the tolerance
    assert replay["train/after_step0"].error < replay["train/after_step0"].tol < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("wrong, failing", [
    ({"lr_schedule": "cos"}, {"train/lr", "train/loss", "train/grad_norm", "train/final"}),
    ({"grad_clip": 0.0}, {"train/loss", "train/grad_norm", "train/after_step0", "train/final"}),
])
def test_a_wrong_schedule_or_clip_fails(train_fx, wrong, failing):
    checks = _checks(train_fx, _replay(train_fx, **wrong))
    assert {n for n, c in checks.items() if c.status == "FAIL"} == failing


@pytest.mark.slow
def test_a_wrong_decay_mask_fails(train_fx, monkeypatch):
    # the naive rule on stacked parameters: decay everything with more than one axis (the per-layer
    # biases and scale_mul are stacked over the blocks here, so they would be decayed)
    monkeypatch.setattr(optim, "decay_mask", lambda params: jax.tree.map(lambda x: x.ndim > 1, params))
    checks = _checks(train_fx, _replay(train_fx))
    assert {n for n, c in checks.items() if c.status == "FAIL"} == {"train/no_decay", "train/after_step0",
                                                                    "train/final"}
    assert "blocks.0.attn.q_bias" in checks["train/no_decay"].note


def test_corrupted_training_fixture(train_fx, trajectory, tmp_path):
    arrays = {k: train_fx[k] for k in train_fx.files}
    del arrays["train/grad_norm"]  # missing
    arrays["train/loss"] = arrays["train/loss"].copy()
    arrays["train/loss"][5] *= 1 + 1e-3  # 10x the tolerance
    arrays["train/final/head.bias"] = arrays["train/final/head.bias"] + 1e-2
    path = tmp_path / "corrupted_train.npz"
    np.savez(path, **arrays)
    with np.load(path) as fx:
        report = training_replay.format_report(training_replay.compare(fx, trajectory)).splitlines()
    status = {m.group(1): m.group(2) for m in (re.match(r"^(\S+)\s+\S+\s+\S+\s+(ok|FAIL|missing)\b", line)
                                               for line in report[1:-1])}
    assert status == {**{n: "ok" for n in CHECKS}, "train/loss": "FAIL", "train/grad_norm": "missing",
                      "train/final": "FAIL"}
    assert "worst head.bias" in report[CHECKS.index("train/final") + 1]
    assert re.match(r"8 ok, 2 FAIL, 1 missing \(of 11 checks", report[-1])


def test_command_line_recognises_a_training_fixture(train_fx, tmp_path, capsys):
    arrays = {k: train_fx[k] for k in train_fx.files}
    cfg = json.loads(str(arrays["config_json"]))
    del cfg["train"]["steps"]
    arrays["config_json"] = np.asarray(json.dumps(cfg))
    path = tmp_path / "no_steps.npz"
    np.savez(path, **arrays)
    assert parity.main([str(path)]) == 2  # refused before anything runs
    assert "gives no 'steps'" in capsys.readouterr().err


def test_the_replay_reads_every_setting_from_the_fixture(train_fx):
    """Nothing of the tiny fixture's settings is assumed: progressive training, label smoothing, the
    weight-decay cosine, another schedule, clipping off and the model options come from config_json."""
    cfg = json.loads(str(train_fx["config_json"]))
    cfg["var"].update(shared_aln=True, attn_l2_norm=False)
    cfg["train"].update(sche="cos", twd=0.04, twde=0.1, tclip=0.0, ls=0.1, pg=0.5, pg0=2, pgwp_it=2.5, wp_it=4,
                        steps=20, batch=8, tblr=0.5, wp0=0.01, wpe=0.1)
    config = training_replay.run_config(cfg)
    t = config.train
    assert (t.lr_schedule, t.wd, t.wd_end, t.grad_clip, t.label_smooth, t.pg, t.pg0) == ("cos", 0.04, 0.1, 0.0, 0.1,
                                                                                         0.5, 2)
    assert (t.steps, t.batch_size, t.tblr, t.warmup_start, t.end_lr_ratio) == (20, 8, 0.5, 0.01, 0.1)
    assert (t.warmup_iters, t.pgwp_iters, t.compute_dtype) == (4.0, 2.5, "float32")
    assert config.var.shared_aln and not config.var.attn_l2_norm
    assert config.var.cond_drop_rate == 0 and config.var.drop_path_rate == 0  # the fixture's labels are final
