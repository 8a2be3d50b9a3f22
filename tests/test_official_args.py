"""The official trainer's flags mapped to var-jax's train config: the run the trainer builds from the
mapping has the official lengths, lr / wd at every chosen step, progressive stages and warm-up factors
(formulas of the official arg_util.py, train.py, trainer.py and lr_control.py, written out here)."""
from __future__ import annotations

import math

import jax
import pytest

from var_jax import parallel
from var_jax.config import apply_override, load_config, var_training
from var_jax import official_args
from var_jax.train.var_schedule import Progressive, RunLength
from var_jax.train.var_trainer import TrainProgram
from test_train_var import official_lr_wd, official_stage  # the official formulas, written out once

IMAGENET = 1_281_167


def official_args_resolved(*, bs, ep, tblr=1e-4, twd=0.05, twde=0.0, wp=0.0, pgwp=0.0, pg=0.0, sche="lin0",
                           iters_train):
    """arg_util.py and train.py: what the official run derives from its flags (one process, ac=1)."""
    tlr = tblr * bs / 256
    twde = twde or twd
    wp = wp or ep / 50
    pgwp = pgwp or ep / 300
    sche = f"lin{pg:g}" if pg > 0 else sche
    return dict(tlr=tlr, twde=twde, wp_it=wp * iters_train, max_it=ep * iters_train,
                prog_wp_it=pgwp * iters_train, sche=sche)


def official_prog_wp(stages, prog_wp_it):
    """trainer.py's stateful warm-up factor of the newest scale, step by step."""
    out, last_si, first, prog_it = [], -1, True, 0
    for si in stages:
        if last_si != si:
            if last_si != -1:
                first = False
            last_si, prog_it = si, 0
        prog_it += 1
        out.append(1.0 if first else max(min(prog_it / prog_wp_it, 1), 0.01))
    return out


def tiny_program(settings: dict, num_images: int) -> tuple[TrainProgram, RunLength]:
    config = var_training()
    config.update({"img_size": 16, "vae": {"vocab_size": 16, "z_channels": 8, "ch": 32, "ch_mult": [1, 1],
                                           "num_res_blocks": 1, "v_patch_nums": [1, 2, 3, 4, 6, 8]},
                   "var": {"vocab_size": 16, "Cvae": 8, "num_classes": 4, "depth": 1, "embed_dim": 16, "num_heads": 2,
                           "patch_nums": [1, 2, 3, 4, 6, 8]}})
    config.train.update(settings)
    length = RunLength.of_config(config.train, num_images)
    return TrainProgram(config, parallel.make_mesh(config, jax.devices()[:1]), length), length


@pytest.mark.parametrize("flags", [
    dict(bs=1024, ep=350, tblr=8e-5, twde=0.08, wpe=0.01),              # the VAR-d30 README command
    dict(bs=768, ep=200, tblr=1e-4, wpe=0.1, sche="cos", wp=3, wp0=0.01),
    dict(bs=512, ep=30, twd=0.1, twde=0.02, sche="exp", tclip=0),        # decay falling; clipping off
    dict(bs=768, ep=350, pg=0.7, pg0=2, pgwp=1.5),                       # progressive: lin0.7
])
def test_mapped_run_follows_the_official_formulas(flags):
    bs = flags["bs"]
    iters = math.ceil(IMAGENET / bs)
    ref = official_args_resolved(iters_train=iters, **{k: v for k, v in flags.items() if k not in ("wpe", "wp0",
                                                                                                     "tclip", "pg0")})
    settings = official_args.train_settings(**flags)
    program, length = tiny_program(settings, IMAGENET)
    assert length.total_steps == ref["max_it"]
    assert length.warmup_exact == pytest.approx(ref["wp_it"]) and length.warmup_steps == round(ref["wp_it"])
    assert length.prog_warmup_steps == pytest.approx(ref["prog_wp_it"])
    assert settings["grad_clip"] == max(flags.get("tclip", 2.0), 0)
    max_it, wp_it = ref["max_it"], ref["wp_it"]
    for it in sorted({0, 1, round(wp_it) - 1, round(wp_it), round(wp_it) + 1, max_it // 3, max_it // 2,
                      max_it * 7 // 10, max_it - 2, max_it - 1}):
        want_lr, want_wd = official_lr_wd(ref["sche"], ref["tlr"], flags.get("twd", 0.05), ref["twde"], it, wp_it,
                                          max_it, wp0=flags.get("wp0", 0.005), wpe=flags.get("wpe", 0.01))
        assert float(program.lr(it)) == pytest.approx(want_lr, rel=2e-6), it
        assert float(program.wd(it)) == pytest.approx(want_wd, rel=2e-6), it
    if flags.get("pg", 0) > 0:
        pg = Progressive(settings["pg"], settings["pg0"], 6, length)
        steps = range(0, max_it, 97)
        stages = [official_stage(s, wp_it, max_it, flags["pg"], flags["pg0"], 6) for s in steps]
        assert [pg.stage(s) for s in steps] == stages


def test_progressive_warmup_factor_equals_the_stateful_official_one():
    # Iteration counts, as a short run states them: 600 steps, warm-up 40, 7.5 steps of stage warm-up.
    settings = official_args.train_settings(bs=16, max_it=600, wp_it=40, pg=0.6, pg0=1, pgwp_it=7.5)
    length = RunLength.of_config(_train(settings), num_images=16)
    assert (length.total_steps, length.warmup_steps, length.warmup_exact, length.prog_warmup_steps) == (600, 40, 40.0,
                                                                                                       7.5)
    pg = Progressive(0.6, 1, 6, length)
    stages = [official_stage(s, 40, 600, 0.6, 1, 6) for s in range(600)]
    assert [pg.stage(s) for s in range(600)] == stages
    assert sorted(set(stages)) == [1, 2, 3, 4, 5]
    want = official_prog_wp(stages, 7.5)
    for s in range(600):
        if stages[s] < 5:  # the last stage trains the whole sequence: no weight applies
            assert pg.newest_weight(s) == pytest.approx(want[s]), s
            assert pg.num_scales_at(s) == stages[s] + 1
        else:
            assert pg.num_scales_at(s) is None
    assert all(w == 1 for w, si in zip(want, stages) if si == 1)  # no warm-up in the first stage


def _train(settings):
    config = var_training()
    config.train.update(settings)
    return config.train


def test_official_defaults_and_special_values():
    s = official_args.train_settings()
    assert (s["batch_size"], s["tblr"], s["epochs"], s["lr_schedule"], s["grad_clip"]) == (768, 1e-4, 250, "lin0", 2.0)
    assert (s["warmup_epochs"], s["pgwp"], s["wd_end"]) == (-1.0, -1.0, -1.0)  # wp=0: ep/50, pgwp=0: ep/300, twde=0: twd
    assert s["compute_dtype"] == "float32"  # fp16=0
    assert official_args.train_settings(fp16=1)["compute_dtype"] == "bfloat16"
    assert official_args.train_settings(tclip=-1)["grad_clip"] == 0.0
    assert official_args.train_settings(max_it=12)["steps"] == 12
    with pytest.raises(ValueError, match="accumulation is not supported"):
        official_args.train_settings(ac=2)
    with pytest.raises(ValueError, match=r"unknown official training flag\(s\) \['tlr'\]"):
        official_args.train_settings(tlr=1e-4)
    with pytest.raises(ValueError, match="give wp_it .* or wp .*, not both"):
        official_args.train_settings(wp=1, wp_it=10)


def test_released_recipes_use_the_mapping():
    d30 = load_config("var_d30").train
    assert d30.to_dict() == {**var_training().train.to_dict(), **official_args.train_settings(
        bs=1024, ep=350, tblr=8e-5, wpe=0.01, twde=0.08, fp16=1)}
    assert (d30.batch_size, d30.epochs, d30.tblr, d30.wd_end, d30.compute_dtype) == (1024, 350, 8e-5, 0.08, "bfloat16")


def test_command_line_prints_the_overrides(capsys):
    assert official_args.main(["--tblr=8e-5", "--bs=1024", "--ep=350", "--twde=0.08", "--fp16=1", "--depth=30"]) == 0
    captured = capsys.readouterr()
    assert "--depth=30" in captured.err  # a model flag: not a training setting
    config = var_training()
    for item in captured.out.split():
        apply_override(config, item.removeprefix("--config."))
    want = official_args.train_settings(tblr=8e-5, bs=1024, ep=350, twde=0.08, fp16=1)
    assert {k: config.train[k] for k in want} == want
    assert official_args.main(["--ac=4"]) == 2
    assert "accumulation" in capsys.readouterr().err
