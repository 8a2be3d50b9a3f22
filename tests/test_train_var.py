"""The VAR trainer: schedules and the no-decay rule against the official formulas, the input pipelines,
the sharded step on 8 fake devices, bit-identical stop/resume, SIGTERM, non-finite steps and bad input.

Every training test runs a tiny VAR (depth 2, width 32) on the embedded digits at 8×8 through a
tiny random tokenizer, from pre-tokenized maps (the cheapest program to compile)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import SignalAfter
from var_jax import convert
from var_jax.checkpoint import save_pretrained
from var_jax.data import pipeline
from var_jax.data.sources import ArrayImages
from var_jax.data.tokenized import TokenSet, train_token_batches, write_tokens
from var_jax.models.state import abstract_model, init_model
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE, VQVAEConfig
from var_jax.train import optim
from var_jax.train.checkpointing import Checkpointer
from var_jax.train.var_schedule import Progressive, RunLength
from var_jax.config import var_training
from var_jax.train.loop import NonFiniteLoss
from var_jax.train.var_trainer import VARTrainer, check_batch

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- the official formulas, written out from the spec (utils/lr_control.py, train.py) ----------------
def official_lr_wd(sche, peak, wd, wd_end, it, wp_it, max_it, wp0=0.005, wpe=0.01):
    wp_it = round(wp_it)
    if it < wp_it:
        ratio = wp0 + (1 - wp0) * it / wp_it
    else:
        p = (it - wp_it) / (max_it - 1 - wp_it)
        rest = 1 - p
        if sche == "cos":
            ratio = wpe + (1 - wpe) * (0.5 + 0.5 * math.cos(math.pi * p))
        elif sche in ("lin", "lin0"):
            t = 0.15 if sche == "lin" else 0.05
            ratio = 1 if p < t else wpe + (1 - wpe) * rest / (1 - t)
        elif sche == "lin00":
            ratio = wpe + (1 - wpe) * rest
        elif sche.startswith("lin"):
            t = float(sche[3:])
            mid = (1 + wpe + (1 - wpe) * (1 - t)) / 2
            ratio = 1 + (mid - 1) * p / t if p < t else wpe + (mid - wpe) * rest / (1 - t)
        else:  # exp
            ratio = 1 if p < 0.15 else math.exp((p - 0.15) / 0.85 * math.log(wpe))
    done = it / (max_it - 1)
    return ratio * peak, wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * done))


def official_stage(g_it, wp_it, max_it, pg, pg0, num_scales):
    if g_it <= wp_it:
        return pg0
    if g_it >= max_it * pg:
        return num_scales - 1
    progress = min(max((g_it - wp_it) / (max_it * pg - wp_it), 0), 1)
    return pg0 + round(progress * (num_scales - 1 - pg0))


@pytest.mark.parametrize("sche", ["lin0", "lin", "lin00", "cos", "exp", "lin0.8"])
def test_lr_and_wd_schedules_equal_the_official_formulas(sche):
    # The VAR-d30 recipe on ImageNet: 1669·350 steps... scaled down so every phase has steps.
    max_it, wp_it, peak, wpe = 1000, 37.4, 3.2e-4, 0.01
    lr = optim.lr_schedule(peak, max_it, round(wp_it), "cosine" if sche == "cos" else sche, end_ratio=wpe)
    wd = optim.wd_schedule(0.05, 0.08, max_it)
    for it in (0, 1, 17, 36, 37, 38, 60, 86, 150, 200, 437, 500, 801, 998, 999):
        want_lr, want_wd = official_lr_wd(sche, peak, 0.05, 0.08, it, wp_it, max_it, wpe=wpe)
        # float32 arithmetic against Python's float64: a few ulps of float32
        assert float(lr(it)) == pytest.approx(want_lr, rel=2e-6, abs=1e-12), (sche, it)
        assert float(wd(it)) == pytest.approx(want_wd, rel=2e-6), (sche, it)


def test_recipe_lengths_and_progressive_stages_follow_train_py():
    from var_jax.config import load_config
    config = load_config("var_d16")
    length = RunLength.of(num_images=1_281_167, batch_size=config.train.batch_size, epochs=config.train.epochs)
    assert (length.iters_per_epoch, length.total_steps, length.warmup_steps) == (1669, 333_800, 6676)
    assert config.train.tblr * config.train.batch_size / 256 == pytest.approx(3e-4)  # the README's peak lr
    assert load_config("var_d30").train.tblr * load_config("var_d30").train.batch_size / 256 == pytest.approx(3.2e-4)
    pg = Progressive(0.7, 4, 10, RunLength.of(num_images=1000, batch_size=10, epochs=30))
    wp_it, max_it = pg.length.warmup_exact, pg.length.total_steps
    assert [pg.stage(s) for s in range(0, max_it, 7)] == [official_stage(s, wp_it, max_it, 0.7, 4, 10)
                                                          for s in range(0, max_it, 7)]
    # the newest scale's weight: 1 in the first stage, then (steps in the stage)/pgwp clipped to [0.01, 1]
    assert pg.newest_weight(0) == 1.0
    first = next(s for s in range(max_it) if pg.stage(s) == 5)
    assert pg.newest_weight(first) == pytest.approx(max(1 / pg.length.prog_warmup_steps, 0.01))
    assert pg.newest_weight(first + 4) == pytest.approx(5 / pg.length.prog_warmup_steps)
    assert pg.num_scales_at(max_it - 1) is None and pg.num_scales_at(0) == 5


def test_progressive_truncation_equals_the_whole_sequence_prefix():
    """A progressive stage teacher-forces only the first scales; under the block-causal mask its logits
    equal the first L' of the whole sequence's, and the newest scale's weight multiplies its 1/L."""
    from var_jax.objectives import loss_weights
    cfg = VARConfig(**tiny_var())
    model = init_model(VAR, cfg)
    rng = np.random.default_rng(0)
    label = np.asarray([1, 7], np.int32)
    x = rng.normal(size=(2, cfg.seq_len - 1, cfg.Cvae)).astype(np.float32)
    whole = np.asarray(model(label, x))
    end = cfg.begin_ends()[1][1]  # scales 1×1 and 2×2: 5 tokens
    part = np.asarray(model(label, x[:, :end - 1], num_scales=2))
    np.testing.assert_allclose(part, whole[:, :end], rtol=1e-5, atol=1e-6)  # float32, same ops on fewer rows
    w = np.asarray(loss_weights(cfg, 2, 0.25))
    np.testing.assert_allclose(w, [1 / 21] + [0.25 / 21] * 4, rtol=1e-6)
    with pytest.raises(ValueError, match=r"x_tokens must have shape \(2, 4, 8\)"):
        model(label, x, num_scales=2)


@pytest.mark.parametrize("shared_aln", [False, True])
def test_no_decay_mask_is_the_official_rule(shared_aln):
    cfg = VARConfig(vocab_size=16, Cvae=8, num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3),
                    attn_l2_norm=True, shared_aln=shared_aln)
    model = abstract_model(VAR, cfg)
    mask = optim.decay_mask(nnx.state(model, nnx.Param))
    flat_mask = {tuple(str(getattr(k, "key", k)) for k in path if not isinstance(k, jax.tree_util.GetAttrKey)): v
                 for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    no_decay_keys = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                     "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")
    shapes = {k: v.shape for k, v in convert.var_to_official(init_model(VAR, cfg)).items()}
    checked = 0
    for entry in convert.var_entries(model):
        # the official filter_params: no decay for 1-D tensors, names ending in 'bias', or the listed keys
        decays = {not (len(shapes[k]) == 1 or k.endswith("bias") or any(n in k for n in no_decay_keys))
                  for k in entry.keys}
        assert len(decays) == 1
        assert flat_mask[tuple(entry.path)] == decays.pop(), entry.keys[0]
        checked += 1
    assert checked == len(flat_mask)
    assert flat_mask[("class_emb",)] and not flat_mask[("blocks", "attn", "q_bias")]


# -- a tiny run on the digits -----------------------------------------------------------------------------
TINY_VAE = VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, v_patch_nums=(1, 2, 4))


def tiny_var(**kw) -> dict:
    base = dict(vocab_size=16, Cvae=8, num_classes=10, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 4),
                attn_l2_norm=True, drop_path_rate=0.05, init_std=-1.0)
    return VARConfig(**{**base, **kw}).to_dict()


TOKENIZERS: dict = {}
_DIGITS = ArrayImages.embedded("digits", "train")
SUBSET = ArrayImages(_DIGITS.images[:96], _DIGITS.labels[:96])  # what the runs train on


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A random tiny tokenizer and the token maps of 96 digits (two crops each)."""
    root = tmp_path_factory.mktemp("var_assets")
    vae = init_model(VQVAE, TINY_VAE, seed=0)
    save_pretrained(root / "tokenizer", vae=vae)
    TOKENIZERS[root] = vae  # the trainers get it directly: loading it again costs seconds and tests nothing new
    write_tokens(vae, SUBSET, root / "tokens", image_size=8, crops=2, seed=0, batch_size=48, num_threads=1)
    return root


PROGRAMS: dict = {}  # compiled programs shared by the trainers of one configuration


def on_the_subset(data):
    """The data sources of a config whose data section is 'the first 96 digits' (writing the token
    maps of all 4,500 costs a minute; the trainers check that the maps are of the config's images)."""
    return SUBSET, ArrayImages.embedded("digits", "heldout")


def trainer_for(assets, workdir, config=None, **train) -> VARTrainer:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "sources", on_the_subset)
        return VARTrainer(config or tiny_config(assets, **train), workdir, tokenizer=TOKENIZERS[assets],
                          programs=PROGRAMS)


def tiny_config(assets: pathlib.Path, **train):
    c = var_training()
    c.img_size, c.vae, c.var, c.tokenizer = 8, TINY_VAE.to_dict(), tiny_var(), str(assets / "tokenizer")
    c.data.update(name="digits", num_threads=1, tokens=str(assets / "tokens"))
    c.train.update(dict(steps=6, batch_size=8, compute_dtype="float32", tblr=0.05, log_every=2, ckpt_every=3,
                        keep_checkpoints=2, max_bad_steps=3), **train)
    c.eval.update(every=-1, sample_every=-1, num_images=16, batch_size=8, sample_classes=[0, 1], sample_per_class=2)
    return c


def host_state(trainer) -> dict:
    return jax.tree.map(np.asarray, jax.device_get(trainer.state))


def assert_trees_equal(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def test_token_and_image_pipelines_are_deterministic_and_resume(assets):
    tokens = TokenSet(assets / "tokens")
    assert len(tokens) == 96 and tokens[0]["tokens"].shape == (2, 21)

    def take(it, n):
        return [next(it) for _ in range(n)]

    for make in (lambda: train_token_batches(tokens, batch_size=8, seed=3, num_threads=1),
                 lambda: pipeline.train_batches(ArrayImages.embedded("digits", "heldout"), image_size=8, batch_size=8,
                                                seed=3, num_threads=1)):
        first, second = iter(make()), iter(make())
        a, b = take(first, 15), take(second, 15)  # past an epoch of the 96 token maps (12 batches)
        for x, y in zip(a, b):
            assert all(np.array_equal(x[k], y[k]) for k in x)
        state = first.get_state()
        resumed = iter(make())
        resumed.set_state(json.loads(json.dumps(state)))  # as it travels through a checkpoint
        for x, y in zip(take(first, 4), take(resumed, 4)):
            assert all(np.array_equal(x[k], y[k]) for k in x)
        assert not all(np.array_equal(a[0][k], a[12][k]) for k in ("label",))  # reshuffled every epoch


def test_unreadable_images_are_skipped_and_counted(assets, tmp_path):
    vae = TOKENIZERS[assets]
    digits = ArrayImages.embedded("digits", "heldout")
    good = [digits[i] for i in range(5)]
    source = good[:2] + [{"image": b"not an image", "label": 3}] + good[2:]
    out = write_tokens(vae, source, tmp_path / "tok", image_size=8, crops=2, batch_size=48, num_threads=1)
    tokens = TokenSet(out)
    assert len(tokens) == 5 and tokens.skipped == 1
    assert tokens[2]["label"] == good[2]["label"]  # the unreadable third one is left out
    batch = next(iter(train_token_batches(tokens, batch_size=4, seed=0, num_threads=1)))
    assert int(batch["skipped"]) == 1


def test_stop_and_resume_is_bit_identical_to_an_uninterrupted_run(assets, tmp_path):
    whole = trainer_for(assets, tmp_path / "whole")
    assert whole.train()["step"] == 6
    first = trainer_for(assets, tmp_path / "split")
    assert first.train(until=4)["step"] == 4
    second = trainer_for(assets, tmp_path / "split")  # resumes from step 4
    assert second.step_count() == 4
    second.train()
    assert_trees_equal(host_state(whole), host_state(second))  # parameters, optimizer, step, counters
    assert whole.data.batches.get_state() == second.data.batches.get_state()
    moved = np.abs(np.asarray(whole.state["params"]["head"]["kernel"][...]) - np.asarray(
        first.program.init_state()["params"]["head"]["kernel"][...])).max()
    assert moved > 1e-4  # training changed the parameters, so equality means something
    assert (tmp_path / "whole" / "model" / "config.json").is_file()


def test_sigterm_saves_a_checkpoint_and_returns(assets, tmp_path):
    trainer = trainer_for(assets, tmp_path / "run", ckpt_every=100)
    trainer.data.batches = SignalAfter(trainer.data.batches, 3)
    result = trainer.train()
    assert result == {"step": 3, "stopped_by": "SIGTERM", "val": {}}
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 3
    assert not (tmp_path / "run" / "model").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed afterwards
    resumed = trainer_for(assets, tmp_path / "run", ckpt_every=100)
    assert resumed.step_count() == 3
    assert_trees_equal(host_state(trainer), host_state(resumed))


def poisoned(batch: dict) -> dict:
    """Token ids past the codebook: the embedding lookup yields NaN, so the loss is not finite."""
    return {**batch, "tokens": np.full_like(batch["tokens"], 10_000)}


def test_a_nonfinite_step_changes_nothing_and_is_counted(assets, tmp_path):
    trainer = trainer_for(assets, tmp_path / "run")
    good = next(trainer.data.batches)
    x_bad, x_good = trainer.device_batch(poisoned(good)), trainer.device_batch(good)
    step = trainer._compiled_step(None, x_good)
    before = host_state(trainer)
    trainer.state, metrics = step(trainer.state, x_bad, trainer._tok_state, np.float32(1))
    after = host_state(trainer)
    assert not np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 1
    assert_trees_equal(before["params"], after["params"])
    assert_trees_equal(before["opt"], after["opt"])
    assert (int(after["step"]), int(after["skipped"]), int(after["bad_run"])) == (1, 1, 1)
    trainer.state, metrics = step(trainer.state, x_good, trainer._tok_state, np.float32(1))
    after_good = host_state(trainer)
    assert np.isfinite(float(metrics["loss"]))
    assert (int(after_good["skipped"]), int(after_good["bad_run"])) == (1, 0)
    assert not np.array_equal(after_good["params"]["head"]["kernel"], after["params"]["head"]["kernel"])


def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(assets, tmp_path):
    trainer = trainer_for(assets, tmp_path / "run")
    batches, count = trainer.data.batches, [0]

    class PoisonAfterThree:
        def __next__(self):
            count[0] += 1
            batch = next(batches)
            return poisoned(batch) if count[0] > 3 else batch

        def get_state(self):
            return batches.get_state()

    trainer.data.batches = PoisonAfterThree()
    with pytest.raises(NonFiniteLoss, match=r"3 steps in a row .* The last checkpoint \(step 3\)"):
        trainer.train()
    good = host_state(trainer)["params"]  # skipped steps left the parameters of step 3
    checkpoints = Checkpointer(tmp_path / "run" / "checkpoints")
    assert checkpoints.latest_step() == 3
    resumed = trainer_for(assets, tmp_path / "run")
    assert resumed.step_count() == 3
    assert_trees_equal(good, host_state(resumed)["params"])
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [2, 4, 6]  # the failed run logged steps 4 and 6 past its checkpoint
    resumed.train()
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [2, 4, 6]  # ... which the resumed run wrote again, in their place


def test_ctrl_c_saves_a_checkpoint_and_returns(assets, tmp_path):
    trainer = trainer_for(assets, tmp_path / "run", ckpt_every=100)
    trainer.data.batches = SignalAfter(trainer.data.batches, 2, signal.SIGINT)  # Ctrl-C in the input pipeline
    before = signal.getsignal(signal.SIGINT)
    assert trainer.train() == {"step": 2, "stopped_by": "SIGINT", "val": {}}
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 2
    assert signal.getsignal(signal.SIGINT) is before  # the handler is removed afterwards
    assert trainer_for(assets, tmp_path / "run", ckpt_every=100).step_count() == 2


def test_a_finished_run_resumed_with_more_steps_replaces_its_model(assets, tmp_path):
    from var_jax.checkpoint import load_pretrained
    trainer_for(assets, tmp_path / "run", steps=4).train()
    model = tmp_path / "run" / "model"
    assert json.loads((model / "config.json").read_text())["trained_steps"] == 4
    longer = trainer_for(assets, tmp_path / "run", steps=6)
    assert longer.step_count() == 4
    longer.train()
    assert json.loads((model / "config.json").read_text())["trained_steps"] == 6
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []  # no leftovers
    exported = nnx.state(load_pretrained(model).var, nnx.Param)
    assert_trees_equal(jax.device_get(nnx.state(longer.var_model(), nnx.Param)), jax.device_get(exported))


def test_token_maps_of_another_tokenizer_or_other_images_are_refused(assets, tmp_path, monkeypatch):
    from var_jax.train import var_trainer

    def no_compute(*a, **k):
        raise AssertionError("compute was started before the token maps were checked")
    monkeypatch.setattr(var_trainer, "TrainProgram", no_compute)
    other = init_model(VQVAE, TINY_VAE, seed=1)  # the same architecture, other weights
    write_tokens(other, SUBSET, tmp_path / "other_tokenizer", image_size=8, crops=1, batch_size=48, num_threads=1)
    c = tiny_config(assets)
    c.data.tokens = str(tmp_path / "other_tokenizer")
    with pytest.raises(ValueError, match=r"written by another tokenizer \(the same architecture, other weights\)"):
        trainer_for(assets, tmp_path / "a", config=c)
    fewer = ArrayImages(SUBSET.images[:48], SUBSET.labels[:48])
    write_tokens(TOKENIZERS[assets], fewer, tmp_path / "other_images", image_size=8, crops=1, batch_size=48,
                 num_threads=1)
    c.data.tokens = str(tmp_path / "other_images")
    with pytest.raises(ValueError, match=r"written from other images \(48 of .* than this config's data \(96 training"):
        trainer_for(assets, tmp_path / "a", config=c)
    meta = tmp_path / "other_images" / "meta.json"  # token maps of a var-jax that recorded neither
    recorded = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in recorded.items() if k not in ("tokenizer", "data")}))
    with pytest.raises(ValueError, match="do not record which tokenizer and images"):
        trainer_for(assets, tmp_path / "a", config=c)
    with pytest.raises(FileExistsError, match="written with other settings .*tokenizer"):  # and never reused
        write_tokens(other, fewer, tmp_path / "other_images", image_size=8, crops=1, batch_size=48, num_threads=1)


def test_settings_that_do_not_fit_the_data_are_listed_at_once(assets, tmp_path, monkeypatch):
    from var_jax.train import var_trainer

    def no_compute(*a, **k):
        raise AssertionError("compute was started before the settings were checked")
    monkeypatch.setattr(var_trainer, "TrainProgram", no_compute)
    monkeypatch.setattr(var_trainer, "load_pretrained", no_compute)
    c = tiny_config(assets, steps=0, epochs=1.0, warmup_epochs=2.0)
    c.eval.update(every=0, num_images=1000, batch_size=600)  # validation on; 500 held-out digits
    with pytest.raises(ValueError) as e:
        trainer_for(assets, tmp_path / "a", config=c)
    message = str(e.value)
    assert "does not fit the data (96 training images, 500 held-out)" in message
    assert "eval.batch_size=600: must be a positive multiple of the data-parallel size 1 and at most the 500" in message
    assert "eval.num_images=1000: must be a positive multiple of eval.batch_size=500" in message
    assert "train.warmup_epochs=2: the warm-up (24 steps at 12 per epoch) must be shorter than the run (12" in message
    assert message.endswith("settings that fit: --config.eval.batch_size=500 --config.eval.num_images=500")
    assert not (tmp_path / "a" / "checkpoints").exists() or not any((tmp_path / "a" / "checkpoints").iterdir())


# -- bad input: a clear error before any compute ----------------------------------------------------------
def test_bad_input_is_refused_before_any_compute(assets, tmp_path, monkeypatch):
    from var_jax.train import var_trainer

    def no_compute(*a, **k):
        raise AssertionError("compute was started before the input was checked")
    monkeypatch.setattr(var_trainer, "TrainProgram", no_compute)
    monkeypatch.setattr(var_trainer, "load_pretrained", no_compute)

    c = tiny_config(assets)
    c.var.vocab_size = 32
    with pytest.raises(ValueError, match="vocab_size=32.*tokenizer has vocab_size=16"):
        VARTrainer(c, tmp_path / "a")
    c = tiny_config(assets)
    c.vae.ch = 64  # the config's tokenizer is not the one in the tokenizer directory
    with pytest.raises(ValueError, match=r"is not the one the config describes: ch=32 there, 64 in the config"):
        VARTrainer(c, tmp_path / "a")
    with pytest.raises(ValueError, match=r"train.batch_size=12 must be a multiple of .* data×fsdp = 8×1 = 8"):
        check_batch(tiny_config(assets, batch_size=12), {"data": 8, "fsdp": 1, "model": 1})
    c = tiny_config(assets)
    c.data.update(name="folder", root=str(tmp_path / "no_such_folder"), tokens="")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        VARTrainer(c, tmp_path / "a")
    c = tiny_config(assets)
    c.data.tokens = str(tmp_path / "no_tokens")
    with pytest.raises(FileNotFoundError, match="holds no token maps"):
        VARTrainer(c, tmp_path / "a")
    c = tiny_config(assets)
    c.tokenizer = ""
    with pytest.raises(ValueError, match="no tokenizer: give --config.tokenizer=DIR"):
        VARTrainer(c, tmp_path / "a")
    with pytest.raises(ValueError, match=r"train.steps must be >= 0 \(0: the length from train.epochs\), got -5"):
        VARTrainer(tiny_config(assets, steps=-5), tmp_path / "a")
    with pytest.raises(ValueError, match=r"train.lr and train.tblr must be >= 0, got lr=-1.0"):
        VARTrainer(tiny_config(assets, lr=-1.0), tmp_path / "a")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="file is a file, not a directory"):
        VARTrainer(tiny_config(assets), tmp_path / "file" / "run")


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "train.steps takes a whole number"),
    ("data.hflip=yes", "data.hflip takes True or False"),
    ("train.lr=nan", "train.lr takes a finite number"),
    ("train.tblr=1e-4,", "train.tblr takes a finite number"),
])
def test_overrides_of_the_wrong_type_are_clear_errors(override, message, tmp_path, capsys):
    from var_jax import cli
    code = cli.main(["train", "--config", "demo_digits", "--workdir", str(tmp_path / "w"), f"--config.{override}"])
    err = capsys.readouterr().err
    assert code == 2 and f"--config.{override} is not valid: {message}" in err and "Traceback" not in err


def test_an_unknown_dtype_is_a_usage_error(tmp_path, capsys):
    from var_jax import cli
    with pytest.raises(SystemExit):
        cli.main(["sample", "--ckpt", str(tmp_path), "--dtype", "foo"])
    err = capsys.readouterr().err
    assert "--dtype: invalid choice: 'foo'" in err and "bfloat16" in err


@pytest.mark.parametrize("outcome, code", [({"step": 3, "stopped_by": "SIGTERM"}, 143),
                                           ({"step": 3, "stopped_by": "SIGINT"}, 130),
                                           ({"step": 6, "stopped_by": None}, 0), (KeyboardInterrupt, 130)])
def test_an_interrupted_run_exits_non_zero(outcome, code, tmp_path, monkeypatch, capsys):
    from var_jax import cli
    from var_jax.train import var_trainer

    def train_var(config, workdir):
        if outcome is KeyboardInterrupt:  # Ctrl-C before the loop (compiling, loading)
            raise KeyboardInterrupt
        return outcome
    monkeypatch.setattr(var_trainer, "train_var", train_var)
    assert cli.main(["train", "--config", "demo_digits", "--workdir", str(tmp_path / "w")]) == code
    assert "Traceback" not in capsys.readouterr().err


def test_a_workdir_of_another_run_is_refused(assets, tmp_path):
    trainer_for(assets, tmp_path / "run").train(until=2)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    c = tiny_config(assets)
    c.var = tiny_var(depth=3)
    # the differing key with both values, however long the section holding it
    with pytest.raises(ValueError, match=r"holds a checkpoint of another run \(var.depth: 2 there, 3 now\)"):
        VARTrainer(c, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == saved  # nothing was touched


# -- 8 fake devices ---------------------------------------------------------------------------------------
SHARDED_SCRIPT = r"""
import json, sys
import jax, numpy as np
from var_jax import parallel
from var_jax.models.quant import MultiScaleQuantizer
from var_jax.models.state import init_model
from var_jax.models.vqvae import VQVAE
from var_jax.train.checkpointing import Checkpointer
from var_jax.train.var_schedule import RunLength
from var_jax.config import var_training
from var_jax.train.var_trainer import TrainProgram
from flax import nnx
sys.path.insert(0, "TESTS")
from test_train_var import TINY_VAE, tiny_var

c = var_training()
c.img_size, c.vae = 8, TINY_VAE.to_dict()
c.var = tiny_var(num_heads=4, embed_dim=64)  # 4 heads, mlp 256, vocab 16: all split by model=2
c.train.update(batch_size=8, compute_dtype="float32", tblr=0.05)
length = RunLength.of(num_images=64, batch_size=8, epochs=1.0, steps=10)
quantize = init_model(VQVAE, TINY_VAE, seed=0).quantize
q_graph, q_state = nnx.split(quantize)
rng = np.random.default_rng(0)
batches = [{"label": rng.integers(0, 10, 8).astype(np.int32), "tokens": rng.integers(0, 16, (8, 21)).astype(np.int32)}
           for _ in range(2)]

def run(devices, mesh_cfg):
    mesh = parallel.make_mesh({"mesh": mesh_cfg}, devices)
    program = TrainProgram(c, mesh, length)
    state = program.init_state()
    start = jax.device_get(state["params"])
    q = jax.device_put(q_state, parallel.shardings(q_state, mesh, program.rules))
    x = [parallel.global_batch(b, mesh, program.rules) for b in batches]
    step = program.step(q_graph, q, x[0])
    losses = []
    for b in x:
        state, m = step(state, b, q, np.float32(1))
        losses.append(float(m["loss"]))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(jax.device_get(state["params"])),
                                                             jax.tree.leaves(start)))
    return program, state, losses, moved

out = {}
ref_program, ref_state, ref_losses, moved = run(jax.devices()[:1], {"data": 1})
ref = jax.device_get(ref_state)
for name, mesh_cfg in (("data4_model2", {"data": 4, "model": 2}), ("fsdp8", {"data": 1, "fsdp": 8})):
    program, state, losses, _ = run(jax.devices(), mesh_cfg)
    specs = {str(s.spec) for s in jax.tree.leaves(jax.tree.map(lambda a: a.sharding, state["params"]))}
    got, want = jax.tree.leaves(jax.device_get(state["params"])), jax.tree.leaves(ref["params"])
    squares = lambda xs: sum(float(np.sum(np.square(x))) for x in xs)
    out[name] = {"losses": losses, "specs": sorted(specs),
                 "params_rel": (squares(a - b for a, b in zip(got, want)) / squares(want)) ** 0.5,
                 "worst_leaf_rel": max(float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(got, want)),
                 "state_equal_shapes": all(a.shape == b.shape for a, b in zip(
                     jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(ref)))}
    if name == "fsdp8":  # a checkpoint written on 8 devices restores on 1, and the reverse
        ck8 = Checkpointer("OUT/ck8", async_save=False)
        ck8.save(3, state, data_state={"n": 1}, config={})
        ck8.wait()
        back1, _, _ = Checkpointer("OUT/ck8").restore(ref_program.abstract_state)
        ck1 = Checkpointer("OUT/ck1", async_save=False)
        ck1.save(3, ref_state, data_state={"n": 1}, config={})
        ck1.wait()
        back8, _, _ = Checkpointer("OUT/ck1").restore(program.abstract_state)
        out["restore_8_to_1"] = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(jax.device_get(back1)), jax.tree.leaves(jax.device_get(state))))
        out["restore_1_to_8"] = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(jax.device_get(back8)), jax.tree.leaves(ref)))
        out["restored_8_devices"] = len(jax.tree.leaves(back8)[0].sharding.device_set)
out["reference_losses"], out["moved"] = ref_losses, moved
print(json.dumps(out))
"""


def test_sharded_step_on_8_devices_equals_one_device(tmp_path):
    script = SHARDED_SCRIPT.replace("TESTS", str(ROOT / "tests")).replace("OUT", str(tmp_path))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = out["reference_losses"]
    assert out["moved"] > 1e-3  # two steps moved the parameters, so equal parameters mean something
    for name in ("data4_model2", "fsdp8"):
        # Sums split across devices are added in another order: float32 rounding, relative 1e-5.
        assert out[name]["losses"] == pytest.approx(ref, rel=1e-5), name
        assert out[name]["params_rel"] <= 1e-5, name
        # Per tensor, AdamW divides each gradient element by its own magnitude, which magnifies the
        # rounding of near-zero gradients (zero-initialised biases after two steps): measured ~1e-5.
        assert out[name]["worst_leaf_rel"] <= 1e-4, name
        assert out[name]["state_equal_shapes"], name
    assert any("model" in s for s in out["data4_model2"]["specs"])  # tensor parallel really split something
    assert any("fsdp" in s for s in out["fsdp8"]["specs"])          # and FSDP sharded the parameters
    assert out["restore_8_to_1"] and out["restore_1_to_8"] and out["restored_8_devices"] == 8
