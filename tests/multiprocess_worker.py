"""One process of the two-process tests in test_parallel.py (run as a script), plus the tiny training
problem those tests also solve in a single process for reference.

    python multiprocess_worker.py OUT_DIR PORT PROCESS_ID NUM_PROCESSES MODEL_DIR

Each process joins the job through ``initialize_distributed`` (explicit coordinator on 127.0.0.1),
psums its process-local data, trains ``STEPS`` SGD steps of a tiny VAR on its share of a fixed
global batch over a (data=2, fsdp=2) mesh, writes an Orbax checkpoint together with the other
process, and samples an evaluation set (``EVAL_SET``) with the models in MODEL_DIR over the same
mesh; process 0 saves the gathered final parameters, the psum result and the evaluation set.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 8
STEPS = 3
LR = 0.5  # large enough that three steps move every parameter measurably
EVAL_SET = {"num": 10, "per_class": 3, "batch": 4, "seed": 7}


def sampling_settings():
    from var_jax.sample import SamplingSettings
    return SamplingSettings(cfg=1.5, top_k=8)


def tiny_config():
    from var_jax.models.var import VARConfig
    return VARConfig(vocab_size=16, Cvae=8, num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3),
                     drop_path_rate=0.0, cond_drop_rate=0.0)


def global_data(step: int) -> dict[str, np.ndarray]:
    """The whole batch of ``step``: labels, teacher-forcing inputs and target tokens."""
    cfg = tiny_config()
    rng = np.random.default_rng(step)
    return {"label": rng.integers(0, cfg.num_classes, GLOBAL_BATCH).astype(np.int32),
            "x": rng.normal(size=(GLOBAL_BATCH, cfg.seq_len - 1, cfg.Cvae)).astype(np.float32),
            "target": rng.integers(0, cfg.vocab_size, (GLOBAL_BATCH, cfg.seq_len)).astype(np.int32)}


def make_step(graph):
    import jax
    import optax
    from flax import nnx

    def loss_fn(params, batch):
        model = nnx.merge(graph, params)
        logits = model(batch["label"], batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["target"]).mean()

    def step(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss
    return step


def initial_params():
    """(graph, parameters) of the tiny VAR with random values drawn by NumPy: the same in every
    process, and nothing to compile."""
    from flax import nnx
    from var_jax.models.state import abstract_model, assign_flat_state, flat_state
    from var_jax.models.var import VAR
    model, rng = abstract_model(VAR, tiny_config()), np.random.default_rng(0)
    assign_flat_state(model, {p: rng.normal(0, 0.1, v.shape).astype(v.dtype) for p, v in flat_state(model).items()})
    return nnx.split(model, nnx.Param)


def main(out_dir: str, port: str, process_id: str, num_processes: str, model_dir: str) -> None:
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": num_processes,
           "JAX_PROCESS_ID": process_id}
    from var_jax import cluster, parallel
    mode = cluster.initialize_distributed(env)

    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from var_jax.train.checkpointing import Checkpointer

    config = {"mesh": {"data": 2, "fsdp": 2, "model": 1}}
    mesh = parallel.make_mesh(config)
    rules = parallel.logical_rules(config)
    which, count = parallel.process_batch_shard(mesh, rules)
    per = GLOBAL_BATCH // count

    # A collective: every process contributes its own rows; the sum covers all of them.
    local = np.arange(per * 3, dtype=np.float32).reshape(per, 3) + 100 * jax.process_index()
    total = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=parallel.replicated(mesh))(
        parallel.global_batch(local, mesh, rules))

    graph, params = initial_params()
    param_sh = parallel.shardings(params, mesh, rules)
    params = jax.device_put(params, param_sh)
    step = jax.jit(make_step(graph), out_shardings=(param_sh, parallel.replicated(mesh)))
    losses = []
    for i in range(STEPS):
        mine = {k: v[which * per:(which + 1) * per] for k, v in global_data(i).items()}
        params, loss = step(params, parallel.global_batch(mine, mesh, rules))
        losses.append(float(loss))

    ckpt = Checkpointer(os.path.join(out_dir, "ckpt"))
    ckpt.save(STEPS, {"params": params}, data_state={"step": STEPS}, config=config)
    ckpt.wait()
    ckpt.close()

    from var_jax.checkpoint import load_pretrained
    from var_jax.sample import Sampler
    from var_jax.sample_npz import write_evaluation_npz
    vae, var, _ = load_pretrained(model_dir)
    write_evaluation_npz(Sampler(vae, var, sampling_settings(), mesh=mesh, rules=rules),
                         os.path.join(out_dir, "samples.npz"), **EVAL_SET)

    gathered = multihost_utils.process_allgather(params, tiled=True)
    if cluster.is_main_process():
        from flax import nnx, traverse_util
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(gathered), sep="/")
        np.savez(os.path.join(out_dir, "params.npz"), **{k: np.asarray(v) for k, v in flat.items()})
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump({"mode": mode, "process_count": jax.process_count(), "device_count": jax.device_count(),
                       "shard": [which, count], "psum": np.asarray(total).tolist(), "losses": losses,
                       "param_specs": {"/".join(map(str, p)): [a for a in v.get_value().spec]
                                       for p, v in nnx.to_flat_state(param_sh)}}, f)
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
