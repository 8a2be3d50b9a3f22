"""Planning with the TPU compiler (libtpu, the ``tpu`` extra) for a small slice, no TPU attached, and
the one function that turns ``var.remat=auto`` into a policy for the planner and the trainer."""
from __future__ import annotations

import importlib.util
import json
import os

import ml_collections
import pytest

from conftest import tiny_vae_config, tiny_var_config
from var_jax import plan, tpu_slices
from var_jax.models import flops
from var_jax.train import step_memory


@pytest.fixture(scope="module")
def libtpu():
    """Skip where libtpu is not installed (a plain `make test`), except in CI, which must run these."""
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must compile for a TPU topology: install the tpu extra (make test EXTRAS=dev,tpu)")
        pytest.skip("libtpu is not installed: make test EXTRAS=dev,tpu runs the TPU compiler's tests")


def tiny_config() -> ml_collections.ConfigDict:
    """A tiny VAR whose activations still dominate its step's memory at a large batch (85 tokens,
    width 128; smaller ones are dominated by the TPU's tile padding, whatever the batch)."""
    patch_nums = (1, 2, 4, 8)
    vae = tiny_vae_config(v_patch_nums=patch_nums, ch_mult=(1, 2, 2))
    var = tiny_var_config(patch_nums=patch_nums, embed_dim=128)
    return ml_collections.ConfigDict({"img_size": vae.image_size(), "vae": vae.to_dict(), "var": var.to_dict()})


SLICE = "v5e:2x2"
MESH = {"data": 1, "fsdp": -1, "model": 1}
# Per chip on SLICE (libtpu 0.0.42.1) at batch BIG: 0.96 GiB without rematerialisation, 0.52 GiB
# keeping the matmuls' outputs (dots_saveable); at SMALL about 1/16 of the first.  BUDGET lies
# between, a factor of 1.3 or more from each.
BIG, SMALL = 1024, 64
BUDGET = 768 << 20


def test_topology_names_and_a_clear_error_for_unknown_ones():
    assert tpu_slices.canonical_name("v5e:4x4")[0] == "v5e:4x4"
    assert tpu_slices.canonical_name("v5litepod-32")[0] == "v5e:4x8"   # v5e counts chips
    assert tpu_slices.canonical_name("v5p-128")[0] == "v5p:4x4x4"      # v5p counts TensorCores, 2 a chip
    assert tpu_slices.canonical_name("v5p-256")[0] == "v5p:4x4x8"
    assert tpu_slices.canonical_name("v4-8")[0] == "v4:2x2x1"
    assert tpu_slices.canonical_name("v6e-256")[0] == "v6e:16x16"
    with pytest.raises(ValueError, match=r"generation one of \['v4', 'v5e', 'v5p', 'v6e'\].*v5e:4x4"):
        tpu_slices.canonical_name("v7x:2x2")
    with pytest.raises(ValueError, match="v5p slices have 3-D shapes"):
        tpu_slices.canonical_name("v5p:4x4")


@pytest.mark.slow
def test_tiny_train_step_compiles_for_a_v5e_slice_and_auto_keeps_all_activations(libtpu):
    config = tiny_config()
    r = plan.plan_tpu(config, SLICE, MESH, SMALL, sample_batch=8, remat="auto", memory_bytes=BUDGET)
    assert (r["topology"], r["device_kind"], r["chips"], r["mesh"]["fsdp"]) == ("v5e:2x2", "TPU v5 lite", 4, 4)
    assert r["hbm_bytes"] == int(15.75 * 2**30) and r["memory_budget_bytes"] == BUDGET
    assert r["fits"] and r["remat"] == "none" and [t["remat"] for t in r["tried"]] == ["none"]
    # float32 parameters, FSDP over 4 chips: every chip holds between a quarter and all of them
    # (vectors too short to split stay whole); AdamW keeps two moments per parameter, plus a step count.
    whole = 4 * r["param_count"]
    assert whole / 4 <= r["params_bytes"] < whole
    assert 2 * r["params_bytes"] <= r["optimizer_bytes"] <= 2 * r["params_bytes"] + 64
    assert r["params_bytes"] + r["optimizer_bytes"] + r["temporaries_bytes"] <= r["total_bytes"] <= BUDGET
    var_cfg = tiny_var_config(patch_nums=(1, 2, 4, 8), embed_dim=128)
    assert r["model_flops"] == pytest.approx(flops.train_flops_per_image(var_cfg) * SMALL)
    assert r["step_time_bound_s"] == pytest.approx(r["model_flops"] / (4 * 197e12))
    # The sampler holds the VAR's parameters (and the tokenizer's) and its KV cache.
    sampler = r["sampler"]
    assert sampler["fits"] and sampler["arguments"] >= r["params_bytes"] and sampler["temporaries"] > 0


@pytest.mark.slow
def test_plan_command_auto_recomputes_at_a_larger_batch(libtpu, tmp_path, capsys):
    """`var-jax plan --topology ... --remat auto`: no rematerialisation does not fit the larger
    batch (an answer, not an error), a checkpoint policy does."""
    path = tmp_path / "tiny.py"
    path.write_text("import ml_collections\n"
                    f"def get_config():\n    return ml_collections.ConfigDict({tiny_config().to_dict()!r})\n")
    args = ["--config", str(path), "--mesh", "fsdp=-1"]
    assert plan.main([*args, "--topology", "v5litepod-4", "--batch", str(BIG), "--remat", "auto",
                      "--memory-gib", str(BUDGET / 2**30)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(printed.strip().splitlines()[-1])
    assert (r["topology"], r["fits"], r["remat"]) == ("v5e:2x2", True, "dots_saveable")
    assert [t["remat"] for t in r["tried"]] == ["none", "dots_saveable"] == list(step_memory.REMAT_ORDER[:2])
    assert not r["tried"][0]["fits"] and r["tried"][0]["total_bytes"] > BUDGET >= r["total_bytes"]
    assert f"fits with remat {r['remat']}" in printed
    assert plan.main([*args, "--topology", "v9:2x2", "--batch", "8"]) == 2
    assert "unknown TPU topology 'v9:2x2'" in capsys.readouterr().err


@pytest.mark.parametrize("dtype, first", [("float32", "dots_saveable"),
                                          ("bfloat16", "dots_with_no_batch_dims_saveable")])
def test_trainer_resolves_auto_on_cpu_within_the_hosts_memory(capsys, monkeypatch, dtype, first):
    """CPU devices report no memory: `auto` measures the step against the host's memory and starts
    from dots_saveable (faster than none on a CPU), in bfloat16 from dots_with_no_batch_dims_saveable
    (faster still there); a host too small for every policy is an error that names them."""
    config = tiny_config()
    config.train = ml_collections.ConfigDict({"batch_size": 4, "compute_dtype": dtype})
    assert step_memory.resolve_auto_remat(config) is config  # remat=none: nothing to decide
    config.var.remat = "auto"
    resolved = step_memory.resolve_auto_remat(config)
    assert resolved.var.remat == first == step_memory.cpu_remat_order(config)[0] and config.var.remat == "auto"
    assert f"var.remat=auto: {first} ({first}: " in capsys.readouterr().out
    monkeypatch.setattr(step_memory, "host_memory_bytes", lambda: 2 ** 20)
    with pytest.raises(ValueError, match="no rematerialisation policy fits a batch of 4 in 0.00 GiB") as e:
        step_memory.resolve_auto_remat(config)
    assert all(f"{policy}: " in str(e.value) for policy in step_memory.cpu_remat_order(config))


def test_cpu_remat_order_follows_the_recipes_compute_dtype_when_a_config_names_none():
    """A model-only config trains in the default recipe's compute dtype, bfloat16."""
    assert step_memory.cpu_remat_order(tiny_config()) == step_memory.CPU_REMAT_ORDER["16-bit"]
