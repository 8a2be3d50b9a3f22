"""Training VAR (``var-jax train``): the official recipe on a device mesh.

Tokens come from the frozen tokenizer, computed inside the compiled step from the images
(``data.tokens`` empty) or read from token maps written once by ``var-jax tokenize``.  The step
is one ``jax.jit`` with explicit input and output shardings over the (data, fsdp, model) mesh of
``var_jax.parallel``; the parameters and optimizer state are donated.  Data parallelism, FSDP and
tensor parallelism are the ``mesh`` section of the config, nothing else.

A run writes to its work directory: ``checkpoints/`` (Orbax; asynchronous, the newest
``train.keep_checkpoints`` kept, resumed automatically, bit-identical to an uninterrupted run),
``metrics.jsonl`` and ``tensorboard/`` (the official metrics), ``samples/step_*.png`` and, at the
end, ``model/`` (tokenizer + VAR, for ``var-jax sample`` and ``var_jax.load_pretrained``).
SIGTERM or Ctrl-C saves a checkpoint and returns; a step with a non-finite loss is skipped and counted, and
``train.max_bad_steps`` of them in a row stop the run, leaving the last good checkpoint as it was.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from var_jax import parallel
from var_jax.checkpoint import CONFIG_FILE, load_pretrained
from var_jax.config import COMPUTE_DTYPES, model_configs, with_training_defaults
from var_jax.data import pipeline
from var_jax.data.sources import fingerprint
from var_jax.data.tokenized import TokenSet, comparable_vae_config, tokenizer_fingerprint, train_token_batches
from var_jax.objectives import TokenMetrics, scale_names
from var_jax.image_io import labelled_grid, save_png
from var_jax.models.state import abstract_model
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAEConfig
from var_jax.train import optim
from var_jax.train.checkpointing import Checkpointer, local_workdir
from var_jax.train.data_fit import DataFit
from var_jax.train.loop import NonFiniteLoss, Trainer, counters  # noqa: F401 (NonFiniteLoss: what train_var raises)
from var_jax.train.metrics import MetricsWriter
from var_jax.train.step_memory import resolve_auto_remat
from var_jax.train.var_schedule import Progressive, RunLength
from var_jax.train.var_step import StepSettings, make_eval_step, make_train_step

log = logging.getLogger(__name__)

# What a resumed run must share with the checkpoint it continues (the rest, e.g. the number of
# steps or the logging cadence, may change between runs).
RESUME_KEYS = ("img_size", "vae", "var", "data", "train.batch_size", "train.seed", "train.label_smooth")

# -- checks that cost no compute ---------------------------------------------------------------------
def check_config(config: ml_collections.ConfigDict) -> tuple[VQVAEConfig, VARConfig]:
    for section in ("img_size", "vae", "var", "tokenizer", "data", "train", "eval", "mesh"):
        if section not in config:
            raise ValueError(f"the config has no '{section}' section; start from "
                             f"var_jax.config.var_training() (see configs/demo_digits.py)")
    vae_cfg, var_cfg = model_configs(config)  # also checks that the two fit together
    if vae_cfg.image_size() != int(config.img_size):
        raise ValueError(f"img_size={config.img_size} but the tokenizer's last scale ({vae_cfg.v_patch_nums[-1]}) × "
                         f"its downsampling ({vae_cfg.downsample}) makes {vae_cfg.image_size()}px images")
    t = config.train
    if t.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"train.compute_dtype must be one of {COMPUTE_DTYPES}, got {t.compute_dtype!r}")
    if not 0 <= t.label_smooth < 1:
        raise ValueError(f"train.label_smooth must be in [0, 1), got {t.label_smooth}")
    for name in ("log_every", "ckpt_every", "keep_checkpoints", "max_bad_steps", "batch_size"):
        if t[name] < 1:
            raise ValueError(f"train.{name} must be at least 1, got {t[name]}")
    if t.steps < 0:
        raise ValueError(f"train.steps must be >= 0 (0: the length from train.epochs), got {t.steps}")
    if t.lr < 0 or t.tblr < 0:
        raise ValueError(f"train.lr and train.tblr must be >= 0, got lr={t.lr}, tblr={t.tblr} (the peak learning rate "
                         f"is train.lr when it is > 0, else train.tblr·batch_size/256)")
    if t.tblr == 0 and t.lr == 0:
        raise ValueError("give a positive train.tblr (peak lr = tblr·batch/256) or train.lr")
    ev = config.eval
    if ev.sample_per_class < 1 or not len(ev.sample_classes):
        raise ValueError("eval.sample_classes must name at least one class and eval.sample_per_class be >= 1")
    bad = [c for c in ev.sample_classes if not 0 <= c < var_cfg.num_classes]
    if bad:
        raise ValueError(f"eval.sample_classes {bad} are not classes of this VAR (0..{var_cfg.num_classes - 1})")
    return vae_cfg, var_cfg


def check_tokenizer(config: ml_collections.ConfigDict, vae_cfg: VQVAEConfig) -> pathlib.Path:
    """The tokenizer directory, after checking (from its config.json only) that it is the config's."""
    if not config.tokenizer:
        raise ValueError("no tokenizer: give --config.tokenizer=DIR, a model directory holding the frozen tokenizer "
                         "(`var-jax convert --vae vae_ch160v4096z32.pth --out DIR`, or WORKDIR/tokenizer of "
                         "`var-jax train-tokenizer`)")
    root = pathlib.Path(config.tokenizer)
    if not (root / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"tokenizer={root} is not a var-jax model directory (no {CONFIG_FILE}); make one with "
                                f"`var-jax convert --vae FILE.pth --out DIR` or `var-jax train-tokenizer`")
    saved = json.loads((root / CONFIG_FILE).read_text())
    if "vae" not in saved:
        raise ValueError(f"{root} holds no tokenizer (its {CONFIG_FILE} has no 'vae')")
    theirs, ours = comparable_vae_config(saved["vae"]), comparable_vae_config(vae_cfg.to_dict())
    diff = [f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} in the config" for k in sorted(set(theirs) | set(ours))
            if theirs.get(k) != ours.get(k)]
    if diff:
        raise ValueError(f"the tokenizer in {root} is not the one the config describes: " + "; ".join(diff) +
                         ". Set the config's vae section to the tokenizer's (or use the matching tokenizer)")
    return root


def check_batch(config: ml_collections.ConfigDict, sizes: dict[str, int]) -> None:
    """The batch sizes split evenly over the mesh's batch axes (data × fsdp) of ``sizes``."""
    ways = sizes["data"] * sizes["fsdp"]
    for name, value in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if value % ways:
            raise ValueError(f"{name}={value} must be a multiple of the data-parallel size data×fsdp = "
                             f"{sizes['data']}×{sizes['fsdp']} = {ways} (mesh {sizes}); the nearest are "
                             f"{max(ways, value // ways * ways)} and {(value // ways + 1) * ways}")


@dataclasses.dataclass
class _Data:
    """The training stream (image batches or token batches) and what the run needs to know of it."""
    batches: Any
    num_images: int
    kind: str  # "image" | "tokens"
    heldout: Any
    token_meta: dict | None  # the token maps' meta.json (kind "tokens")


def _open_data(config, vae_cfg: VQVAEConfig, var_cfg: VARConfig, mesh) -> _Data:
    shard = parallel.process_batch_shard(mesh, parallel.logical_rules(config))
    if shard != (jax.process_index(), jax.process_count()):
        raise ValueError("this mesh makes processes share batch slices (a model-parallel group spans processes); "
                         "keep mesh.model within one host")
    d, t = config.data, config.train
    train_src, heldout = pipeline.sources(d)
    labels = getattr(train_src, "labels", None)
    if labels is not None and len(labels) and int(np.max(labels)) >= var_cfg.num_classes:
        raise ValueError(f"the training set has labels up to {int(np.max(labels))} but var.num_classes="
                         f"{var_cfg.num_classes}; set var.num_classes to at least {int(np.max(labels)) + 1}")
    if d.tokens:
        tokens = TokenSet(d.tokens)
        meta = tokens.meta
        if meta.get("vae") != comparable_vae_config(vae_cfg.to_dict()) or meta.get("image_size") != config.img_size:
            raise ValueError(f"the token maps in {d.tokens} were written by another tokenizer or image size; write "
                             f"them again with `var-jax tokenize` for this config")
        if "tokenizer" not in meta or "data" not in meta:
            raise ValueError(f"the token maps in {d.tokens} do not record which tokenizer and images they were "
                             f"written from (an older var-jax); write them again with `var-jax tokenize`")
        if meta["data"] != fingerprint(train_src):
            raise ValueError(f"the token maps in {d.tokens} were written from other images ({meta['num_images']} of "
                             f"{meta.get('source') or 'a source not named'}) than this config's data "
                             f"({len(train_src)} training images of data.name={d.name!r}, data.root={d.root!r}); "
                             f"write them again with `var-jax tokenize` for this config, or set the data section to "
                             f"the images they were written from")
        if int(np.max(tokens.labels)) >= var_cfg.num_classes:
            raise ValueError(f"the token maps have labels up to {int(np.max(tokens.labels))} but var.num_classes="
                             f"{var_cfg.num_classes}")
        stream = train_token_batches(tokens, batch_size=int(t.batch_size), seed=int(t.seed),
                                     num_threads=int(d.num_threads))
        return _Data(iter(stream), len(tokens), "tokens", heldout, meta)
    stream = pipeline.train_batches(train_src, image_size=int(config.img_size), batch_size=int(t.batch_size),
                                    seed=int(t.seed), hflip=bool(d.hflip), num_threads=int(d.num_threads))
    return _Data(iter(stream), len(train_src), "image", heldout, None)


# -- the compiled step on a mesh ---------------------------------------------------------------------
# The train settings a TrainProgram depends on (the rest is the loop's business).
_PROGRAM_TRAIN_KEYS = ("batch_size", "seed", "compute_dtype", "tblr", "lr", "lr_schedule", "warmup_start",
                       "end_lr_ratio", "wd", "wd_end", "b1", "b2", "eps", "grad_clip", "label_smooth", "pg")


class TrainProgram:
    """The optimizer, the abstract training state with its shardings, and the compiled steps of a
    VAR configuration on a mesh: what the trainer runs, the benchmark times and the planner sizes."""

    @staticmethod
    def key(config: ml_collections.ConfigDict, mesh, length: RunLength) -> str:
        """What a program depends on: two configs with the same key can share one program."""
        c = json.loads(config.to_json())
        train = {k: c["train"][k] for k in _PROGRAM_TRAIN_KEYS}
        return json.dumps({"config": {**{k: c[k] for k in ("img_size", "vae", "var", "mesh")}, "train": train},
                           "mesh": [[int(d.id) for d in mesh.devices.flat], list(mesh.axis_names),
                                    list(mesh.devices.shape)], "length": dataclasses.asdict(length)}, sort_keys=True)

    def __init__(self, config: ml_collections.ConfigDict, mesh, length: RunLength):
        t = config.train
        _, var_cfg = model_configs(config)
        self.mesh, self.rules = mesh, parallel.logical_rules(config)
        self.replicate_indivisible = parallel.mesh_section(config)["replicate_indivisible"]
        self.replicated = parallel.replicated(mesh)
        self.compute_cfg = dataclasses.replace(var_cfg, dtype=t.compute_dtype)
        self.label_smooth, self.seed = float(t.label_smooth), int(t.seed)
        peak = float(t.lr) if t.lr > 0 else float(t.tblr) * int(t.batch_size) / 256
        schedule = f"lin{float(t.pg):g}" if t.pg > 0 else t.lr_schedule  # the official override
        self.lr = optim.lr_schedule(peak, length.total_steps, length.warmup_steps, schedule,
                                    warmup_start=float(t.warmup_start), end_ratio=float(t.end_lr_ratio))
        self.wd = optim.wd_schedule(float(t.wd), None if t.wd_end < 0 else float(t.wd_end), length.total_steps)
        self.var_graph, abstract_params = nnx.split(abstract_model(VAR, self.compute_cfg))
        self.tx = optim.adamw(abstract_params, lr=self.lr, weight_decay=self.wd, b1=float(t.b1), b2=float(t.b2),
                              eps=float(t.eps), grad_clip=float(t.grad_clip))
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        abstract = {"step": scalar, "params": abstract_params, "opt": jax.eval_shape(self.tx.init, abstract_params),
                    "skipped": scalar, "bad_run": scalar}
        self.state_sharding = self.shardings(abstract)
        self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                           self.state_sharding)
        self._init = None
        self._steps: dict[tuple, Any] = {}

    def shardings(self, tree):
        """The shardings of ``tree``'s variables under this program's mesh and rules."""
        return parallel.shardings(tree, self.mesh, self.rules, replicate_indivisible=self.replicate_indivisible)

    def init_state(self) -> dict:
        """A fresh training state (step 0), initialised directly in its shardings."""
        if self._init is None:
            cfg, seed, tx = self.compute_cfg, self.seed, self.tx

            def init():
                # strongly typed (a weakly typed initial value would make the first update compile twice)
                params = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), nnx.state(VAR(cfg, rngs=nnx.Rngs(seed))))
                return {**counters(), "params": params, "opt": tx.init(params)}
            self._init = jax.jit(init, out_shardings=self.state_sharding)
        return self._init()

    def batch_sharding(self, batch: dict) -> dict:
        return {k: parallel.batch_sharding(self.mesh, self.rules, len(v.shape)) for k, v in batch.items()}

    def step(self, tokenizer_graph, tokenizer_state, batch: dict, num_scales: int | None = None):
        """The jitted step for batches shaped like ``batch`` (its values may be abstract)."""
        key = (tokenizer_graph, num_scales, tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items())))
        if key not in self._steps:
            settings = StepSettings(label_smooth=self.label_smooth, num_scales=num_scales, seed=self.seed,
                                    layout=parallel.Layout.of(self.mesh, self.rules))
            fn = make_train_step(self.var_graph, tokenizer_graph, self.tx, self.compute_cfg, settings, self.lr,
                                 self.wd)
            self._steps[key] = jax.jit(
                fn, donate_argnums=0, out_shardings=(self.state_sharding, self.replicated),
                in_shardings=(self.state_sharding, self.batch_sharding(batch),
                              self.shardings(tokenizer_state), self.replicated))
        return self._steps[key]


def abstract_batch(config: ml_collections.ConfigDict, batch: int, images: bool = False) -> dict:
    """Shapes of a global batch: token sequences (the pre-tokenized path) or uint8 images."""
    _, var_cfg = model_configs(config)
    out = {"label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    if images:
        out["image"] = jax.ShapeDtypeStruct((batch, int(config.img_size), int(config.img_size), 3), jnp.uint8)
    else:
        out["tokens"] = jax.ShapeDtypeStruct((batch, var_cfg.seq_len), jnp.int32)
    return out


def lower_train_step(config: ml_collections.ConfigDict, mesh, batch: int, *, images: bool = False):
    """One training step of ``config``'s VAR for a global ``batch`` on ``mesh``, lowered from abstract
    inputs (nothing is allocated): ``.compile().memory_analysis()`` sizes it (``var-jax plan``).
    ``images``: tokenize inside the step (the tokenizer's encoder included) instead of reading tokens."""
    from var_jax.models.vqvae import VQVAE
    full = with_training_defaults(config)
    length = RunLength.of(num_images=batch * 100, batch_size=batch, epochs=1.0, steps=1000)
    program = TrainProgram(full, mesh, length)
    vae_cfg, _ = model_configs(full)
    vae = abstract_model(VQVAE, vae_cfg)
    tok_graph, tok_state = nnx.split(vae if images else vae.quantize)
    tok_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tok_state,
                             program.shardings(tok_state))
    shapes = abstract_batch(full, batch, images)
    step = program.step(tok_graph, tok_state, shapes)
    return step.lower(program.abstract_state, shapes, tok_state, jax.ShapeDtypeStruct((), jnp.float32))


# -- the trainer -------------------------------------------------------------------------------------
class VARTrainer(Trainer):
    """Builds (or resumes) a run in ``workdir``; :meth:`train` runs it (the loop of
    :class:`var_jax.train.loop.Trainer`) with validation and sample grids as hooks."""

    desc, export_dir, resume_keys = "VAR", "model", RESUME_KEYS

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, tokenizer=None,
                 programs: dict | None = None):
        """``tokenizer``: the VQVAE of ``config.tokenizer`` when the caller has it loaded already;
        ``programs``: a dict the caller keeps to share compiled programs between trainers of the
        same configuration (see :meth:`TrainProgram.key`)."""
        # var.remat=auto: the policy whose step fits these devices, decided as `var-jax plan --remat auto` does
        config = resolve_auto_remat(config)
        self.config = config
        self.workdir = local_workdir(workdir)
        t, ev = config.train, config.eval
        self.vae_cfg, var_cfg = check_config(config)
        self.var_cfg = dataclasses.replace(var_cfg, dtype="float32")  # what is saved
        tokenizer_dir = check_tokenizer(config, self.vae_cfg)
        self.mesh = parallel.make_mesh(config)
        check_batch(config, parallel.mesh_shape(config))
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=int(t.keep_checkpoints))
        saved = self.check_resumable()
        self.data = _open_data(config, self.vae_cfg, var_cfg, self.mesh)
        fit = DataFit(self.data.num_images, len(self.data.heldout))
        if int(ev.every) >= 0:  # validation on: its images must be there
            sizes = parallel.mesh_shape(config)
            fit.evaluation(ev, sizes["data"] * sizes["fsdp"])
        try:
            self.length = RunLength.of_config(t, self.data.num_images)
        except ValueError as e:
            fit.problems.append(str(e))
        fit.check()
        self.total_steps = self.length.total_steps
        self.progressive = Progressive(float(t.pg), int(t.pg0), len(var_cfg.patch_nums), self.length)
        every_eval = int(ev.every) or max(1, round(float(ev.every_epochs) * self.length.iters_per_epoch))
        self.add_hook(self.validate, every=every_eval, name="val")
        self.add_hook(self.sample_grid, every=int(ev.sample_every) or every_eval)

        # -- everything from here on allocates or computes --------------------------------------------
        if tokenizer is not None and comparable_vae_config(tokenizer.cfg.to_dict()) != comparable_vae_config(
                self.vae_cfg.to_dict()):
            raise ValueError("the tokenizer passed in is not the config's (vae section)")
        self.vae = load_pretrained(tokenizer_dir).vae if tokenizer is None else tokenizer
        if self.data.kind == "tokens" and self.data.token_meta["tokenizer"] != tokenizer_fingerprint(self.vae):
            raise ValueError(f"the token maps in {config.data.tokens} were written by another tokenizer (the same "
                             f"architecture, other weights) than {tokenizer_dir}; write them again with `var-jax "
                             f"tokenize` for this tokenizer, or set tokenizer= to the one that wrote them")
        if programs is None:
            self.program = TrainProgram(config, self.mesh, self.length)
        else:
            key = TrainProgram.key(config, self.mesh, self.length)
            self.program = programs.get(key) or programs.setdefault(key, TrainProgram(config, self.mesh, self.length))
        self.lr, self.wd = self.program.lr, self.program.wd
        self.rules = self.program.rules
        self._vae_graph, vae_state = nnx.split(self.vae)
        self._vae_state = jax.device_put(vae_state, self.program.shardings(vae_state))
        if self.data.kind == "tokens":  # the step needs only the quantizer
            self._tok_graph, q_state = nnx.split(self.vae.quantize)
            self._tok_state = jax.device_put(q_state, self.program.shardings(q_state))
        else:
            self._tok_graph, self._tok_state = self._vae_graph, self._vae_state
        self._eval_sums = None
        self.last_good_step: int | None = None
        if saved is not None:
            self.resume(self.program.abstract_state)
        else:
            self.state = self.program.init_state()

    # -- the step, for the loop ------------------------------------------------------------------------
    @property
    def batches(self):
        return self.data.batches

    def _compiled_step(self, num_scales: int | None, batch: dict):
        return self.program.step(self._tok_graph, self._tok_state, batch, num_scales)

    def device_batch(self, batch: dict) -> dict:
        """A pipeline batch (this process's share, NumPy) → global arrays on the mesh."""
        return parallel.global_batch({k: v for k, v in batch.items() if k in ("label", "image", "tokens")},
                                     self.mesh, self.rules)

    def train_step(self, step: int, batch: dict) -> dict[str, Any]:
        x = self.device_batch(batch)
        num_scales = self.progressive.num_scales_at(step)
        weight = np.float32(self.progressive.newest_weight(step))
        self.state, metrics = self._compiled_step(num_scales, x)(self.state, x, self._tok_state, weight)
        return metrics

    def log_values(self, done: int, batch: dict, means: dict[str, float]) -> dict[str, float]:
        num_scales = self.progressive.num_scales_at(done - 1)
        return {"data/skipped_images": int(batch["skipped"]), "skipped_steps": int(self.state["skipped"]),
                "time/images_per_s": means["time/steps_per_s"] * int(self.config.train.batch_size),
                "progressive/stage": (num_scales or len(self.var_cfg.patch_nums)) - 1,
                "progressive/newest_weight": float(self.progressive.newest_weight(done - 1)),
                "epoch": done / self.length.iters_per_epoch}

    def progress(self, m: dict[str, float]) -> dict[str, str]:
        return dict(Lm=f"{m['L_mean']:.3f}", Lt=f"{m.get('L_tail', float('nan')):.3f}", Accm=f"{m['acc_mean']:.1f}",
                    tnm=f"{m['grad_norm']:.2f}", lr=f"{m['lr']:.2e}", img_s=f"{m['time/images_per_s']:.0f}")

    # -- validation, samples, checkpoints, export ------------------------------------------------------
    def validate(self, step: int | None = None, writer: MetricsWriter | None = None) -> dict[str, Any]:
        """Teacher-forced loss and accuracy per scale on ``eval.num_images`` held-out images (the official
        vL_mean, vL_tail, vacc_mean, vacc_tail), without label dropout.  Unreadable images are skipped
        (the pipeline warns); when not one batch is left, a warning and no metrics ({})."""
        ev = self.config.eval
        data = pipeline.eval_batches(self.data.heldout, image_size=int(self.config.img_size),
                                     batch_size=int(ev.batch_size), num_images=int(ev.num_images),
                                     num_threads=int(self.config.data.num_threads))
        if self._eval_sums is None:
            fn = make_eval_step(self.program.var_graph, self._vae_graph, self.program.compute_cfg)
            param_sharding = self.program.state_sharding["params"]
            self._eval_sums = jax.jit(fn, out_shardings=self.program.replicated, in_shardings=(
                param_sharding, {"image": parallel.batch_sharding(self.mesh, self.rules, 4),
                                 "label": parallel.batch_sharding(self.mesh, self.rules, 1)},
                self.program.shardings(self._vae_state)))
        totals = TokenMetrics(self.var_cfg.patch_nums)
        for batch in data:
            sums = self._eval_sums(self.state["params"], self.device_batch(batch), self._vae_state)
            totals.update(sums, int(ev.batch_size))
        if not totals.images:  # unreadable images (logged by the pipeline) left not one batch
            log.warning("step %d: validation skipped: fewer than eval.batch_size=%d held-out images could be read",
                        self.step_count() if step is None else step, ev.batch_size)
            return {}
        r = totals.result()
        out = {"L_mean": r["L_avg"], "L_tail": r["L_last"], "acc_mean": 100 - r["Err_avg"],
               "acc_tail": 100 - r["Err_last"]}
        for name, loss, err in zip(scale_names(r["patch_nums"]), r["L_per_scale"], r["Err_per_scale"]):
            out[f"L_per_scale/{name}"], out[f"acc_per_scale/{name}"] = loss, 100 - err
        if writer is not None:
            writer.scalars(self.step_count() if step is None else step, {f"val/{k}": v for k, v in out.items()})
        return out

    def var_model(self, dtype: str | None = None) -> VAR:
        """The VAR with the current parameters (on the host), float32 unless ``dtype`` says otherwise."""
        cfg = self.var_cfg if dtype is None else dataclasses.replace(self.var_cfg, dtype=dtype)
        model = abstract_model(VAR, cfg)
        nnx.update(model, self._host(self.state["params"]))
        return model

    @staticmethod
    def _host(tree):
        if jax.process_count() == 1:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)

    def sample_grid(self, step: int | None = None, writer: MetricsWriter | None = None) -> np.ndarray | None:
        """One row of samples per ``eval.sample_classes`` class → ``samples/step_<step>.png`` (on one
        process only: the sampler is not sharded here)."""
        if jax.process_count() > 1:
            return None
        from var_jax.sample import Sampler, SamplingSettings
        ev = self.config.eval
        step = self.step_count() if step is None else step
        settings = SamplingSettings(cfg=float(ev.sample_cfg), top_k=int(ev.sample_top_k), top_p=float(ev.sample_top_p))
        sampler = Sampler(self.vae, self.var_model(self.config.train.compute_dtype), settings)
        labels = np.repeat(np.asarray(ev.sample_classes), int(ev.sample_per_class))
        images = np.asarray(sampler(labels, seed=int(self.config.train.seed)).images)
        rows = np.split(images, len(ev.sample_classes))
        grid = labelled_grid(rows, [str(c) for c in ev.sample_classes])
        save_png(grid, self.workdir / "samples" / f"step_{step:07d}.png")
        if writer is not None:
            writer.image(step, "samples", grid)
        return grid

    def export_models(self) -> dict[str, Any]:
        return {"vae": self.vae, "var": self.var_model(),
                "extra": {"trained_steps": self.step_count(), "num_classes": self.var_cfg.num_classes}}


def train_var(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train (or resume) a VAR in ``workdir``; returns what :meth:`VARTrainer.train` returns."""
    return VARTrainer(config, workdir).train()
