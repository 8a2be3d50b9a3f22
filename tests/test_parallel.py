"""Meshes, logical-axis rules, shardings, multi-host start-up and multi-process training (var_jax.parallel).

Multi-device checks run in subprocesses with fake CPU devices (the flag must be set before JAX
starts); the multi-process checks start two real processes joined over 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util
from jax.sharding import PartitionSpec as P

from var_jax import cluster, parallel
from var_jax.checkpoint import load_pretrained, save_pretrained
from var_jax.models.state import abstract_model, assign_flat_state, flat_state
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE
from var_jax.config import load_config

TESTS = pathlib.Path(__file__).resolve().parent


def _env(devices: int) -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip()}


def _run(script: str, devices: int, timeout: int = 300) -> dict:
    """Run ``script`` on ``devices`` fake CPU devices; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=_env(devices), timeout=timeout, cwd=TESTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- mesh sizes and rules (no devices needed) -------------------------------------------------------
def test_mesh_shape_fills_the_rest_and_rejects_bad_sizes():
    assert parallel.mesh_shape(None, 8) == {"data": 8, "fsdp": 1, "model": 1}
    assert parallel.mesh_shape({"mesh": {"data": 2, "fsdp": -1, "model": 2}}, 16) == {"data": 2, "fsdp": 4,
                                                                                       "model": 2}
    assert parallel.mesh_shape({"data": -1, "model": 4}, 8) == {"data": 2, "fsdp": 1, "model": 4}
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="= 6 but there are 8 devices"):
        parallel.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        parallel.mesh_shape({"data": -1, "model": 3}, 8)
    with pytest.raises(ValueError, match=r"unknown mesh key\(s\) \['tensor'\]"):
        parallel.mesh_shape({"mesh": {"tensor": 2}}, 8)
    for bad in (0, "2", 1.5, True):
        with pytest.raises(ValueError, match="mesh.fsdp must be a positive whole number"):
            parallel.mesh_shape({"fsdp": bad}, 8)
    # a run's config without a mesh section: every device on data
    assert parallel.mesh_shape({"var": {"depth": 2}, "img_size": 256}, 4) == {"data": 4, "fsdp": 1, "model": 1}
    with pytest.raises(ValueError, match="dcn_data=3 must divide the data axis"):
        parallel.mesh_shape({"data": -1, "dcn_data": 3}, 8)


def test_parse_mesh():
    assert parallel.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "model": 1}
    assert parallel.parse_mesh(" model=2 , data=-1") == {"data": -1, "fsdp": 1, "model": 2}
    assert parallel.parse_mesh("") == {"data": -1, "fsdp": 1, "model": 1}
    for bad in ("tensor=2", "data=0", "data=two", "data"):
        with pytest.raises(ValueError, match="--mesh takes axis=size pairs"):
            parallel.parse_mesh(bad)


def test_logical_rules_are_config_data():
    rules = parallel.logical_rules({"mesh": {"data": -1}})
    assert rules["batch"] == ("data", "fsdp") and rules["embed"] == ("fsdp",)
    assert rules["heads"] == rules["mlp"] == rules["vocab"] == ("model",)
    assert rules["layers"] == () and rules["seq"] == ()
    config = load_config("demo_digits", ["--config.mesh.rules.embed=()", "--config.mesh.rules.mlp=('fsdp', 'model')"])
    assert parallel.logical_rules(config)["embed"] == () and parallel.logical_rules(config)["mlp"] == ("fsdp", "model")
    with pytest.raises(ValueError, match=r"mesh.rules.heads = \('tensor',\): \['tensor'\] are not mesh axes"):
        parallel.logical_rules({"mesh": {"rules": {"heads": ("tensor",)}}})


def test_partition_spec_maps_names_and_refuses_uneven_parameter_axes():
    mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "model": 4})  # only sizes are read
    rules = parallel.logical_rules(None)
    assert parallel.partition_spec(("layers", "embed", "mlp"), (3, 32, 128), mesh, rules) == P(None, "fsdp", "model")
    assert parallel.partition_spec(("batch", "seq", "embed"), (8, 5, 32), mesh, rules) == P(("data", "fsdp"), None,
                                                                                            None)
    # 6 heads do not split over model=4: an error that names the parameter, or (unnamed) left whole
    with pytest.raises(ValueError, match=r"parameter w has shape \(2, 6, 16\): its 'heads' dimension \(6\) cannot be "
                                         r"split over mesh axis model of size 4"):
        parallel.partition_spec(("layers", "heads", None), (2, 6, 16), mesh, rules, what="parameter w")
    assert parallel.partition_spec(("layers", "heads", None), (2, 6, 16), mesh, rules) == P(None, None, None)
    assert parallel.partition_spec(None, (4, 4), mesh, rules) == P()
    with pytest.raises(KeyError, match="logical axis 'channels' has no rule"):
        parallel.partition_spec(("channels",), (4,), mesh, rules)
    with pytest.raises(ValueError, match="2 axis names"):
        parallel.partition_spec(("embed", "mlp"), (4,), mesh, rules)


def test_a_parameter_the_rules_cannot_split_is_an_error_or_an_explicit_logged_opt_out(caplog):
    from jax.sharding import AbstractMesh, AxisType

    from var_jax.models.var import VARConfig
    mesh = AbstractMesh((1, 2, 4), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)  # sizes only, no devices
    cfg = VARConfig(vocab_size=16, Cvae=8, num_classes=10, depth=2, embed_dim=48, num_heads=6, patch_nums=(1, 2))
    state = nnx.state(abstract_model(VAR, cfg))
    with pytest.raises(ValueError, match=r"parameter blocks/attn/mat_qkv has shape \(2, 48, 3, 6, 8\): its 'heads' "
                                         r"dimension \(6\) cannot be split over mesh axis model of size 4"):
        parallel.shardings(state, mesh)
    with caplog.at_level("WARNING", logger="var_jax.parallel"):
        layout = parallel.shardings(state, mesh, replicate_indivisible=True)
    assert "kept whole (mesh.replicate_indivisible): parameter blocks/attn/mat_qkv" in caplog.text
    assert layout["blocks"]["attn"]["mat_qkv"].get_value().spec == P(None, "fsdp", None, None, None)  # heads whole
    assert layout["blocks"]["ffn"]["fc1"]["kernel"].get_value().spec == P(None, "fsdp", "model")  # the rest still split


# -- start-up detection (faked environments, nothing is joined) -------------------------------------
def _fake_tpu_vm(root: pathlib.Path) -> str:
    for i, vendor in enumerate(("0x8086", "0x1ae0")):  # an Intel device and a Google TPU chip
        d = root / "sys/bus/pci/devices" / f"0000:00:0{i}.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
    return str(root)


SLURM_2 = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_LOCALID": "0"}


def test_detect_cluster(tmp_path):
    empty = str(tmp_path / "no_sys")
    assert cluster.detect_cluster({}, empty) == "off"
    assert cluster.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, empty) == "off"
    assert cluster.detect_cluster(SLURM_2, empty) == "slurm"
    assert cluster.detect_cluster({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", **SLURM_2}, empty) == "env"
    assert cluster.detect_cluster({}, _fake_tpu_vm(tmp_path / "tpu")) == "tpu"
    assert cluster.detect_cluster({"VAR_JAX_DISTRIBUTED": "off", **SLURM_2}, empty) == "off"
    with pytest.raises(ValueError, match="VAR_JAX_DISTRIBUTED='mpi'; use one of"):
        cluster.detect_cluster({"VAR_JAX_DISTRIBUTED": "mpi"}, empty)


def test_initialize_distributed_passes_what_each_cluster_needs(tmp_path):
    calls = []
    init = lambda **kw: calls.append(kw)  # noqa: E731
    empty = str(tmp_path / "no_sys")
    assert cluster.initialize_distributed({}, initialize=init, sys_root=empty) == "off"
    assert calls == []  # one host: nothing to join
    assert cluster.initialize_distributed(SLURM_2, initialize=init, sys_root=empty) == "slurm"
    assert cluster.initialize_distributed({}, initialize=init, sys_root=_fake_tpu_vm(tmp_path / "t")) == "tpu"
    assert calls == [{}, {}]  # JAX reads SLURM and the TPU metadata itself
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert cluster.initialize_distributed(env, initialize=init, sys_root=empty) == "env"
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    with pytest.raises(ValueError, match=r"missing \['JAX_PROCESS_ID'\]"):
        cluster.initialize_distributed({k: v for k, v in env.items() if k != "JAX_PROCESS_ID"}, initialize=init,
                                        sys_root=empty)
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID must be in \[0, JAX_NUM_PROCESSES=4\), got 4"):
        cluster.initialize_distributed({**env, "JAX_PROCESS_ID": "4"}, initialize=init, sys_root=empty)
    with pytest.raises(ValueError, match="must be host:port"):
        cluster.initialize_distributed({**env, "JAX_COORDINATOR_ADDRESS": "10.0.0.1"}, initialize=init,
                                        sys_root=empty)
    assert len(calls) == 3  # the rejected environments called nothing


def test_slurm_tasks_get_their_gpus(tmp_path):
    calls = []
    init = lambda **kw: calls.append(kw)  # noqa: E731
    two_nodes = {**SLURM_2, "SLURM_NNODES": "2", "SLURM_LOCALID": "3"}
    all_8 = "0,1,2,3,4,5,6,7"
    for env, want in [
        ({**two_nodes, "SLURM_NTASKS": "16", "CUDA_VISIBLE_DEVICES": all_8}, [3]),  # 8 tasks/node, all GPUs seen
        ({**two_nodes, "SLURM_NTASKS": "16", "CUDA_VISIBLE_DEVICES": "3"}, [0]),  # --gpus-per-task=1 binding
        ({**two_nodes, "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": all_8}, list(range(8))),
        ({**two_nodes, "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": all_8}, [4, 5, 6, 7]),
    ]:
        assert cluster.initialize_distributed(env, initialize=init, sys_root=str(tmp_path)) == "slurm"
        assert calls.pop() == {"local_device_ids": want}, env
    with pytest.raises(ValueError, match="3 SLURM tasks per node cannot share the 8 GPUs"):
        cluster.initialize_distributed({**two_nodes, "SLURM_NTASKS": "6", "CUDA_VISIBLE_DEVICES": all_8},
                                        initialize=init, sys_root=str(tmp_path))


# -- 8 fake devices -------------------------------------------------------------------------------
_SHARDING_SCRIPT = """
import json
import jax, numpy as np
from flax import nnx
from var_jax import parallel
from multiprocess_worker import initial_params

spec = lambda sharding: [list(a) if isinstance(a, tuple) else a for a in sharding.spec]
out = {}
config = {"mesh": {"data": 2, "fsdp": 2, "model": 2}}
mesh = parallel.make_mesh(config)
rules = parallel.logical_rules(config)
out["mesh"] = dict(mesh.shape)
graph, params = initial_params()
placed = jax.device_put(params, parallel.shardings(params, mesh, rules))
shards = {}
for path, v in nnx.to_flat_state(placed):
    a = v.get_value()
    shards["/".join(map(str, path))] = [list(a.shape), list(a.addressable_shards[0].data.shape), spec(a.sharding)]
out["shards"] = shards
batch = parallel.global_batch({"x": np.arange(16, dtype=np.float32).reshape(8, 2)}, mesh, rules)["x"]
out["batch"] = [list(batch.shape), spec(batch.sharding), list(batch.addressable_shards[0].data.shape)]
out["batch_equal"] = bool(np.array_equal(np.asarray(batch), np.arange(16).reshape(8, 2)))
out["process_shard"] = list(parallel.process_batch_shard(mesh, rules))
out["fsdp_only"] = dict(parallel.make_mesh({"mesh": {"data": 1, "fsdp": -1}}).shape)
try:
    parallel.make_mesh({"mesh": {"data": -1, "dcn_data": 2}})
except ValueError as e:
    out["dcn_error"] = str(e)
print(json.dumps(out))
"""


def test_shardings_on_8_devices():
    out = _run(_SHARDING_SCRIPT, devices=8)
    assert out["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
    s = out["shards"]
    # (global shape, one device's shard, spec): embed split over fsdp, mlp/heads/vocab over model.
    assert s["blocks/ffn/fc1/kernel"] == [[2, 32, 128], [2, 16, 64], [None, "fsdp", "model"]]
    assert s["blocks/attn/mat_qkv"] == [[2, 32, 3, 2, 16], [2, 16, 3, 1, 16],
                                        [None, "fsdp", None, "model", None]]
    assert s["head/kernel"] == [[32, 16], [16, 8], ["fsdp", "model"]]
    assert s["blocks/ada_lin/bias"][1] == s["blocks/ada_lin/bias"][0]  # no logical name is split: whole
    assert out["batch"] == [[8, 2], [["data", "fsdp"], None], [2, 2]]
    assert out["batch_equal"] and out["process_shard"] == [0, 1]
    assert out["fsdp_only"] == {"data": 1, "fsdp": 8, "model": 1}
    assert "dcn_data=2 but the devices form 1 processes" in out["dcn_error"]


# -- models ----------------------------------------------------------------------------------------
def _random(cls, cfg, seed: int):
    """A model with random weights drawn by NumPy (no initialiser to compile)."""
    model, rng = abstract_model(cls, cfg), np.random.default_rng(seed)
    assign_flat_state(model, {p: rng.normal(0, 0.1, v.shape).astype(v.dtype) for p, v in flat_state(model).items()})
    return model


_SAMPLER_SCRIPT = """
import json, sys
import jax, ml_collections, numpy as np
from flax import nnx
from var_jax import parallel, plan
from var_jax.checkpoint import load_pretrained
from var_jax.sample import Sampler, SamplingSettings

vae, var, _ = load_pretrained(sys.argv[1])
vae_cfg, var_cfg = vae.cfg, var.cfg
settings = SamplingSettings(**json.loads(sys.argv[2]))
labels = np.arange(4) % var_cfg.num_classes
sizes = {"data": 2, "fsdp": 2, "model": 2}
mesh = parallel.make_mesh({"mesh": sizes})
sharded = Sampler(vae, var, settings, mesh=mesh)
many = sharded(labels, seed=3)
out = {"images": np.asarray(many.images).tolist(), "tokens": [np.asarray(t).tolist() for t in many.tokens],
       "image_shards": sorted({sh.data.shape[0] for sh in many.images.addressable_shards}),
       "fc1_shard": list(sharded.states[1]["blocks"]["ffn"]["fc1"]["kernel"].get_value().addressable_shards[0].data.shape),
       "batch_multiple": sharded.batch_multiple}
try:
    sharded(labels[:2], seed=3)
except ValueError as e:
    out["odd_batch_error"] = str(e)

# What the programs that ran use on one device (compile() returns those the first call compiled),
# against the planner's figures for the same mesh: both programs' arguments and outputs, the larger
# of their temporaries.
tokens, images = (p.memory_analysis() for p in sharded.compile(4))
dev0 = jax.devices()[0]
var_params = nnx.state(nnx.merge(sharded.graphdefs[1], sharded.states[1]), nnx.Param)
out["params_on_device0"] = sum(sh.data.nbytes for x in jax.tree.leaves(var_params)
                               for sh in x.addressable_shards if sh.device == dev0)
out["ran"] = {"arguments": tokens.argument_size_in_bytes + images.argument_size_in_bytes,
             "temporaries": max(tokens.temp_size_in_bytes, images.temp_size_in_bytes),
             "outputs": tokens.output_size_in_bytes + images.output_size_in_bytes}
config = ml_collections.ConfigDict({"img_size": vae_cfg.image_size(), "vae": vae_cfg.to_dict(),
                                    "var": var_cfg.to_dict()})
out["plan"] = plan.plan(config, sizes, batch=8, sample_batch=4, train=True, sampling=settings)

# The trainer's step really running on the mesh (what lower_train_step lowers abstractly).
import jax.numpy as jnp
from var_jax.config import var_training
from var_jax.train.var_trainer import TrainProgram, abstract_batch
from var_jax.train.var_schedule import RunLength
full = var_training()
full.update(dict(config))
program = TrainProgram(full, mesh, RunLength.of(num_images=800, batch_size=8, epochs=1.0, steps=1000))
tok_graph, tok_state = nnx.split(vae.quantize)
tok_state = parallel.place(tok_state, parallel.shardings(tok_state, mesh, program.rules))
rng = np.random.default_rng(0)
batch = parallel.global_batch({"label": np.arange(8, dtype=np.int32) % var_cfg.num_classes,
                               "tokens": rng.integers(0, var_cfg.vocab_size, (8, var_cfg.seq_len)).astype(np.int32)},
                              mesh, program.rules)
step = program.step(tok_graph, tok_state, abstract_batch(full, 8))
state, metrics = step(program.init_state(), batch, tok_state, jnp.float32(1.0))
out["train_loss_finite"] = bool(np.isfinite(float(metrics["loss"])))
ran = step.lower(state, batch, tok_state, jnp.float32(1.0)).compile().memory_analysis()
out["ran_train"] = {"arguments": ran.argument_size_in_bytes, "temporaries": ran.temp_size_in_bytes}
out["train_params_on_device0"] = sum(sh.data.nbytes for x in jax.tree.leaves(state["params"])
                                     for sh in x.addressable_shards if sh.device == dev0)
out["train_opt_on_device0"] = sum(sh.data.nbytes for x in jax.tree.leaves(state["opt"])
                                  for sh in x.addressable_shards if sh.device == dev0)
print(json.dumps(out))
"""


def assert_samples_agree(images, tokens, ref_images, ref_tokens, *, min_same: float) -> None:
    """Samples drawn by two program layouts (another sharding, another process count) from the same
    seeds.  Their logits differ by float rounding (~1e-6 relative: sums in another order), so a
    sampled token differs only where its random draw falls that close to a boundary of the
    distribution, and then so do its later scales and its image; measured on this machine: every
    token and image equal.  Required: at least ``min_same`` of the images have all their tokens
    equal (a broken layout agrees on ~1/vocab of them), and those images are equal within one
    uint8 level (the decoder's own rounding)."""
    images, ref_images = np.asarray(images, np.int32), np.asarray(ref_images, np.int32)
    assert images.shape == ref_images.shape
    if tokens is None:  # images only: identical tokens give images within one level
        same = np.abs(images - ref_images).reshape(len(images), -1).max(axis=1) <= 1
    else:
        same = np.all([np.all(np.asarray(a) == np.asarray(b), axis=1) for a, b in zip(tokens, ref_tokens)], axis=0)
        assert np.abs(images[same] - ref_images[same]).max(initial=0) <= 1
    assert same.mean() >= min_same, f"{same.sum()} of {len(same)} samples agree"


@pytest.mark.slow
def test_sharded_sampler_on_8_devices_matches_one_device_and_the_plan(tiny_model_dir):
    import multiprocess_worker as w
    from var_jax.sample import Sampler

    settings = w.sampling_settings()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SAMPLER_SCRIPT), str(tiny_model_dir),
                           json.dumps(dataclasses.asdict(settings))], capture_output=True, text=True,
                          env=_env(8), timeout=300, cwd=TESTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The reference: the same models, labels and seed on this process's single device.
    vae, var, _ = load_pretrained(tiny_model_dir)
    one = Sampler(vae, var, settings)(np.arange(4) % var.cfg.num_classes, seed=3)
    # The batch is split 4 ways (data × fsdp) and fc1 (2, 32, 128) over fsdp and model: the same
    # samples as on one device (the random draws do not depend on the layout), within float rounding.
    assert out["batch_multiple"] == 4 and out["image_shards"] == [1]
    assert out["fc1_shard"] == [2, 16, 64]
    assert_samples_agree(out["images"], out["tokens"], one.images, one.tokens, min_same=3 / 4)
    assert "a batch of 2 cannot be split over 4 devices" in out["odd_batch_error"]
    # The planner compiles the same programs from abstract inputs: its figures are the ones of the
    # programs that ran, and its parameter bytes are what device 0 really holds.
    planned = out["plan"]["sampler"]
    assert {k: planned[k] for k in out["ran"]} == out["ran"]
    assert out["plan"]["params"] == out["params_on_device0"]
    # The same for the trainer's step: equal figures, byte for byte.
    assert out["train_loss_finite"]
    step = out["plan"]["train_step"]
    assert {k: step[k] for k in out["ran_train"]} == out["ran_train"]
    assert step["params"] == out["train_params_on_device0"] == out["plan"]["params"]
    assert step["optimizer_state"] == out["train_opt_on_device0"] >= 2 * step["params"]  # two moments each


# -- two processes on 127.0.0.1 --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_vae, tiny_var):
    """test_sample.py's tiny tokenizer and VAR (the same programs, so the compilation cache is
    shared) with random weights, as a model directory."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    var_cfg = tiny_var(patch_nums=(1, 2, 4), shared_aln=True, attn_l2_norm=False)
    save_pretrained(out, vae=_random(VQVAE, tiny_vae(), 0), var=_random(VAR, var_cfg, 1))
    return out


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_dir):
    """Two processes with 2 fake CPU devices each (a 4-device, data=2 × fsdp=2 mesh) run
    multiprocess_worker.py; → its output directory."""
    out = tmp_path_factory.mktemp("two_processes")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(TESTS / "multiprocess_worker.py"), str(out), port, str(i), "2",
                               str(tiny_model_dir)],
                              env={k: v for k, v in _env(2).items() if not k.startswith(("SLURM_", "JAX_COORD"))},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return out


def _single_process_training():
    """The workers' training problem on this one device, whole batches: the reference."""
    import multiprocess_worker as w
    graph, params = w.initial_params()
    step = jax.jit(w.make_step(graph))
    for i in range(w.STEPS):
        params, _ = step(params, w.global_data(i))
    return params


@pytest.mark.slow
def test_two_processes_sum_and_train_like_one(two_process_run):
    result = json.loads((two_process_run / "result.json").read_text())
    assert (result["mode"], result["process_count"], result["device_count"]) == ("env", 2, 4)
    assert result["shard"] == [0, 2]
    # Process p holds rows arange(12).reshape(4, 3) + 100p; the column sums cover both processes.
    local = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(result["psum"], (local + local + 100).sum(0))
    assert result["param_specs"]["blocks/ffn/fc1/kernel"] == [None, "fsdp", None]  # really sharded

    reference = traverse_util.flatten_dict(nnx.to_pure_dict(_single_process_training()), sep="/")
    initial = traverse_util.flatten_dict(nnx.to_pure_dict(__import__("multiprocess_worker").initial_params()[1]),
                                         sep="/")
    with np.load(two_process_run / "params.npz") as got:
        assert sorted(got.files) == sorted(reference)
        moved = 0
        for k in reference:
            # float32 sums over the batch happen in another order across devices: ~1e-7 relative
            # error per step, amplified by LR=0.5 over 3 steps, stays well inside 2e-5.
            np.testing.assert_allclose(got[k], np.asarray(reference[k]), rtol=2e-5, atol=2e-5, err_msg=k)
            moved += not np.allclose(got[k], np.asarray(initial[k]), atol=1e-4)
        assert moved >= len(reference) // 2  # training changed the parameters: the comparison means something


@pytest.mark.slow
def test_checkpoint_of_two_processes_restores_in_one(two_process_run):
    import multiprocess_worker as w
    from var_jax.train.checkpointing import Checkpointer, abstract_like

    _, params = w.initial_params()
    mesh = parallel.make_mesh(None)  # this process's one device
    params = jax.device_put(params, parallel.shardings(params, mesh))  # the target's layout: the current mesh
    ckpt = Checkpointer(two_process_run / "ckpt")
    try:
        state, data_state, config = ckpt.restore(abstract_like({"params": params}))
    finally:
        ckpt.close()
    assert data_state == {"step": w.STEPS} and config["mesh"] == {"data": 2, "fsdp": 2, "model": 1}
    restored = traverse_util.flatten_dict(nnx.to_pure_dict(state["params"]), sep="/")
    with np.load(two_process_run / "params.npz") as written:
        for k, v in restored.items():
            assert v.sharding.num_devices == 1  # restored onto this process's single device
            np.testing.assert_array_equal(np.asarray(v), written[k], err_msg=k)


@pytest.mark.slow
def test_evaluation_set_of_two_processes_equals_one_process(two_process_run, tiny_model_dir):
    import multiprocess_worker as w
    from var_jax.sample import Sampler
    from var_jax.sample_npz import write_evaluation_npz

    vae, var, _ = load_pretrained(tiny_model_dir)
    alone = write_evaluation_npz(Sampler(vae, var, w.sampling_settings()), two_process_run / "alone.npz",
                                 **w.EVAL_SET)
    with np.load(two_process_run / "samples.npz") as together, np.load(alone) as reference:
        assert together["arr_0"].shape == (10, 8, 8, 3)
        np.testing.assert_array_equal(together["labels"], reference["labels"])
        assert_samples_agree(together["arr_0"], None, reference["arr_0"], None, min_same=8 / 10)
    assert not (two_process_run / "samples.npz.parts").exists()


def test_plan_command_reports_parameter_bytes_and_refuses_bad_meshes(capsys):
    from var_jax import plan

    # d16 on one device: 310,283,520 float32 parameters (the official count) = 1183.6 MiB.
    assert plan.main(["--config", "var_d16", "--mesh", "data=1", "--batch", "8", "--no-train"]) == 0
    assert "310.3M parameters" in capsys.readouterr().out
    assert plan.main(["--config", "var_d16", "--mesh", "data=1", "--batch", "8", "--no-train", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == 310_283_520 * 4 and report["param_count"] == 310_283_520
    assert plan.main(["--config", "var_d16", "--mesh", "data=-1", "--batch", "8"]) == 2
    assert "the planner needs every axis size spelled out" in capsys.readouterr().err
    assert plan.main(["--config", "var_d16", "--mesh", "data=2,fsdp=x", "--batch", "8"]) == 2
    assert "--mesh takes axis=size pairs" in capsys.readouterr().err
