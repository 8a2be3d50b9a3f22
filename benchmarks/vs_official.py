"""Side by side with the official PyTorch code: sampling and training speed on one machine's CPU,
with the same weights, each side in a fresh process of its own; one JSON line per comparison and
batch size.

    pip install -e '.[convert]'   # one Python with var-jax and torch
    python benchmarks/vs_official.py --official PATH/TO/VAR --config var_d16 --batch 1 \\
        --cfg 4 --top-k 900 --top-p 0.95 --repeats 3 --rounds 2 --what sample train [--config.key=value]

``--official`` is a checkout of FoundationVision/VAR: its ``models`` package is imported from there
(nothing of it is in this repository).  The tokenizer and the VAR of ``--config`` are built by the
official constructors with seeded random weights (the VAR through ``init_weights``, as
``build_vae_var`` does), and their state dicts are converted into var-jax models
(``var_jax.convert``), so both sides compute with identical weights; before anything is timed the
teacher-forced logits of the two are compared (``logits_max_abs_diff``).  Both run in float32 on
the CPU, torch with ``--threads`` threads, XLA on every core; drop-path and dropout are off on both
sides, class dropout is the config's on both (as both trainers do).

Each side runs in a process of its own (this script again, with ``--side``), ``--rounds`` times,
alternately: official, ours, official, ours ...  Each process builds the official models from the
same seed; ours converts them, compares the logits and frees them before it times anything.  In
one process the other side's models, optimizer state and freed activations stay in memory beside
the side being timed: there, VAR-d16's training step at batch 2 held 19 GB of a 23 GB machine and
ours took 18.0 s against 13.0 s in a process of its own.  Each process makes ``--warmup`` untimed
calls, then ``--repeats`` timed ones (``times``, per process): the second call of a process was
the slow one on both sides (the d16 step at batch 2: ours with token maps 31.6 s, then 13.6 and
14.3 s; the official one with images 18.6 s, then 15.5 and 14.9 s).  ``peak_rss_gb`` is each side's largest resident
memory.

sample: the official ``autoregressive_infer_cfg`` under ``torch.inference_mode()`` against
var-jax's compiled ``Sampler`` with the same labels and settings.  Our compilation is not timed
(``ours_compile_s``).
train: one optimizer step of the official recipe at ``--batch`` images on each side: teacher-forced
forward with the class labels, per-token cross-entropy averaged over the tokens, backward, clipping
at 2.0, AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.05 with the official no-decay rule).  Ours is
the trainer's own compiled step (``TrainProgram``).  ``--train-input tokens``: token maps given
(the official step gets the teacher-forcing input computed beforehand, as from precomputed maps;
ours computes it from the maps inside its step); ``images``: the tokenizer runs inside the step (the
official one under ``no_grad``, as its trainer does).  Both start from the same loss
(``first_loss``).

``official_s`` and ``ours_s`` are medians over every timed call of a side; ``ratio`` =
official_s / ours_s (> 1: var-jax is faster).  The machine's floor (benchmarks/floor.py, float32)
is measured in the same run, and ``fraction_of_floor`` is each side's model FLOPs per second over
it: for sampling the transformer's FLOPs from the shapes (sample_speed.py) plus XLA's count of the
decoder, for training 3× the forward (var_jax.models.flops) plus, with images, XLA's count of the
tokenizer.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
import warnings

from floor import call_times, floors, xla_flops
from sample_speed import scale_flops

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from var_jax import parallel, xla_cpu
from var_jax.config import load_config, model_configs, split_overrides, var_training
from var_jax.convert import vae_from_official, var_from_official
from var_jax.models.flops import train_flops_per_image
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAEConfig
from var_jax.objectives import split_scales
from var_jax.sample import Sampler, SamplingSettings
from var_jax.train.loop import counters
from var_jax.train.optim import NO_DECAY_NAMES
from var_jax.train.var_schedule import RunLength
from var_jax.train.var_trainer import TrainProgram, abstract_batch

LOGITS_TOL = 1e-3  # float32 on both sides: the parity fixtures agree within 1e-5, so 1e-3 only catches real mismatches
# The optimizer step on both sides: the official recipe's AdamW betas, weight decay and clipping
# (train.py's defaults), at a constant lr.
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-4, (0.9, 0.95), 0.05, 2.0
# What the official VQVAE constructor fixes in its Encoder/Decoder (its ddconfig), which our config
# makes settable with these same values as defaults.
LAYOUT = ("ch_mult", "num_res_blocks", "using_sa", "using_mid_sa", "in_channels")


def cpu_model() -> str | None:
    """The CPU's name as lscpu shows it (platform.processor() is often empty on Linux)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def import_official(path: str):
    """torch and the official ``models`` package of the checkout at ``path``, or a clear exit."""
    try:
        import torch
    except ImportError:
        sys.exit("vs_official.py needs torch in this Python: pip install -e '.[convert]'")
    root = pathlib.Path(path).expanduser().resolve()
    if not (root / "models" / "var.py").is_file() or not (root / "dist.py").is_file():
        sys.exit(f"--official {path}: not a checkout of FoundationVision/VAR (no models/var.py and dist.py there)")
    sys.path.insert(0, str(root))
    # The official forward passes run under torch.cuda.amp.autocast(enabled=False), which works on
    # the CPU but warns that the spelling is deprecated.
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*", category=FutureWarning)
    import models
    import models.basic_vae
    return torch, models


def build_official(torch, models, vae_cfg: VQVAEConfig, var_cfg, seed: int = 0):
    """The official VQVAE and VAR of our configurations, seeded, VAR initialised by init_weights."""
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(sys.stderr):  # the constructors print: keep stdout JSON lines
        vae = models.VQVAE(vocab_size=vae_cfg.vocab_size, z_channels=vae_cfg.z_channels, ch=vae_cfg.ch,
                           dropout=vae_cfg.dropout, beta=vae_cfg.beta, using_znorm=vae_cfg.using_znorm,
                           quant_conv_ks=vae_cfg.quant_conv_ks, quant_resi=vae_cfg.quant_resi,
                           share_quant_resi=vae_cfg.share_quant_resi,
                           default_qresi_counts=vae_cfg.default_qresi_counts, v_patch_nums=vae_cfg.v_patch_nums,
                           test_mode=True)
        layout = {k: getattr(vae_cfg, k) for k in LAYOUT}
        if layout != {k: getattr(VQVAEConfig(), k) for k in LAYOUT}:
            # Another Encoder/Decoder layout (the digits tokenizer): the official classes built with
            # it, in place of the fixed ones; then the constructor's test mode again.
            dd = dict(ch=vae_cfg.ch, z_channels=vae_cfg.z_channels, dropout=vae_cfg.dropout, **layout)
            vae.encoder = models.basic_vae.Encoder(double_z=False, **dd)
            vae.decoder = models.basic_vae.Decoder(**dd)
            vae.eval().requires_grad_(False)
        var = models.VAR(vae, num_classes=var_cfg.num_classes, depth=var_cfg.depth, embed_dim=var_cfg.embed_dim,
                         num_heads=var_cfg.num_heads, mlp_ratio=var_cfg.mlp_ratio, drop_rate=var_cfg.drop_rate,
                         attn_drop_rate=var_cfg.attn_drop_rate, drop_path_rate=var_cfg.drop_path_rate,
                         norm_eps=var_cfg.norm_eps, shared_aln=var_cfg.shared_aln,
                         cond_drop_rate=var_cfg.cond_drop_rate, attn_l2_norm=var_cfg.attn_l2_norm,
                         patch_nums=var_cfg.patch_nums)
        var.init_weights(init_adaln=var_cfg.init_adaln, init_adaln_gamma=var_cfg.init_adaln_gamma,
                         init_head=var_cfg.init_head, init_std=var_cfg.init_std)
    # Its sampling generator lives on dist.get_device(), CUDA where torch sees a GPU; the official
    # trainer replaces it the same way.
    var.rng = torch.Generator()
    return vae, var


def state_dict(module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def logits_difference(torch, off_vae, off_var, vae, var, rng: np.random.Generator, batch: int = 2) -> float:
    """Max |official − ours| of the teacher-forced logits of random token maps and labels, each side
    building its teacher-forcing input from the maps with its own quantizer."""
    cfg = var.cfg
    tokens = rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len))
    labels = rng.integers(0, cfg.num_classes, batch)
    maps = split_scales(tokens, cfg.patch_nums)
    keep, off_var.cond_drop_rate = off_var.cond_drop_rate, 0.0  # its forward drops labels even in eval mode
    off_var.eval()
    with torch.no_grad():
        x = off_vae.quantize.idxBl_to_var_input([torch.from_numpy(m) for m in maps])
        ref = off_var(torch.from_numpy(labels), x).numpy()
    off_var.cond_drop_rate = keep
    x_ours = nnx.jit(lambda q, m: q.idx_to_var_input(m))(vae.quantize, [jnp.asarray(m, jnp.int32) for m in maps])
    ours = nnx.jit(VAR.__call__)(var, jnp.asarray(labels, jnp.int32), x_ours)
    return float(np.max(np.abs(np.asarray(ours) - ref)))


def timed(fn, args) -> tuple[object, list[float]]:
    """The result of the first of ``--warmup`` untimed calls of ``fn``, then the wall times of
    ``--repeats`` more."""
    first = jax.block_until_ready(fn())
    call_times(fn, args.warmup - 1)
    return first, call_times(fn, args.repeats)


def official_sample(torch, off_var, batch: int, args) -> dict:
    labels = torch.from_numpy(np.arange(batch) % off_var.num_classes)
    off_var.eval()

    def call():
        with torch.inference_mode():
            return off_var.autoregressive_infer_cfg(B=batch, label_B=labels, g_seed=0, cfg=args.cfg,
                                                    top_k=args.top_k, top_p=args.top_p)

    return {"times": timed(call, args)[1]}


def ours_sample(vae, var, batch: int, args) -> dict:
    settings = SamplingSettings(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
    sampler = Sampler(vae, var, settings, uint8=False)  # float images in [0, 1], as the official returns
    labels, key = jnp.asarray(np.arange(batch) % var.cfg.num_classes, jnp.int32), jax.random.key(0)
    t0 = time.perf_counter()
    sampler.compile(batch)
    compile_s = time.perf_counter() - t0
    times = timed(lambda: sampler(labels, key=key).images, args)[1]
    g_vae = sampler.graphdefs[0]
    f_hat = jax.ShapeDtypeStruct((batch, *vae.cfg.latent_hw(), vae.cfg.z_channels), jnp.float32)
    decode = jax.jit(lambda s, f: nnx.merge(g_vae, s).fhat_to_img(f))
    flops = sum(scale_flops(var.cfg, batch, si) for si in range(len(var.cfg.patch_nums)))
    flops += xla_flops(decode, sampler.states[0], f_hat)
    return {"times": times, "compile_s": compile_s, "flops": flops}


def training_batch(config, var_cfg, batch: int, images: bool) -> dict[str, np.ndarray]:
    """The same labels and token maps (or images) on both sides: drawn from seed 0."""
    shapes = abstract_batch(config, batch, images=images)
    rng = np.random.default_rng(0)
    host = {"label": rng.integers(0, var_cfg.num_classes, batch).astype(np.int32)}
    if images:
        host["image"] = rng.integers(0, 256, shapes["image"].shape).astype(np.uint8)
    else:
        host["tokens"] = rng.integers(0, var_cfg.vocab_size, shapes["tokens"].shape).astype(np.int32)
    return host


def official_train(torch, off_vae, off_var, var_cfg, batch: int, images: bool, config, args) -> dict:
    """train.py's optimizer (fused AdamW over filter_params' two groups) and trainer.py's train_step
    without its logging."""
    patch_nums, seq_len, vocab = var_cfg.patch_nums, var_cfg.seq_len, var_cfg.vocab_size
    host = training_batch(config, var_cfg, batch, images)
    off_var.train()
    named = list(off_var.named_parameters())
    no_decay = lambda n, p: p.ndim == 1 or n.endswith("bias") or any(k in n for k in NO_DECAY_NAMES)  # noqa: E731
    opt = torch.optim.AdamW([{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": WEIGHT_DECAY},
                             {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, fused=True)
    params_list = [p for _, p in named]
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(config.train.label_smooth), reduction="none")
    loss_weight = torch.ones(1, seq_len) / seq_len
    label = torch.from_numpy(host["label"]).long()
    if images:
        pixels = torch.from_numpy(host["image"].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    else:
        gt_given = torch.from_numpy(host["tokens"]).long()
        with torch.no_grad():
            x_given = off_vae.quantize.idxBl_to_var_input(split_scales(gt_given, patch_nums))

    def step():
        if images:
            with torch.no_grad():
                idx = off_vae.img_to_idxBl(pixels)
                gt, x = torch.cat(idx, dim=1), off_vae.quantize.idxBl_to_var_input(idx)
        else:
            gt, x = gt_given, x_given
        logits = off_var(label, x)
        loss = criterion(logits.view(-1, vocab), gt.view(-1)).view(batch, -1)
        loss = loss.mul(loss_weight).sum(dim=-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_list, GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    first, times = timed(step, args)
    return {"times": times, "first_loss": float(first)}


def ours_train(vae, var, batch: int, images: bool, config, args) -> dict:
    config.train.batch_size = batch
    mesh = parallel.make_mesh(config)
    program = TrainProgram(config, mesh, RunLength.of(num_images=batch * 1000, batch_size=batch, epochs=1.0,
                                                      steps=1000, warmup_iters=0))
    tok_graph, tok_state = nnx.split(vae if images else vae.quantize)  # token maps need the quantizer only
    tok_state = jax.device_put(tok_state, program.shardings(tok_state))
    shapes = abstract_batch(config, batch, images=images)
    device_batch = parallel.global_batch(training_batch(config, var.cfg, batch, images), mesh, program.rules)
    step = program.step(tok_graph, tok_state, shapes)
    weight = np.float32(1)
    t0 = time.perf_counter()
    compiled = step.lower(program.abstract_state, shapes, tok_state, jax.ShapeDtypeStruct((), jnp.float32)).compile()
    compile_s = time.perf_counter() - t0
    # The converted weights, in the trainer's state layout: both sides start from the same model.
    # (not copied: the step donates its state, and ``var`` is not used again)
    params = jax.tree.map(lambda a, x: jnp.asarray(x, a.dtype), program.abstract_state["params"], nnx.state(var))
    state = jax.device_put({**counters(), "params": params, "opt": program.tx.init(params)}, program.state_sharding)

    def call():
        nonlocal state
        state, metrics = compiled(state, device_batch, tok_state, weight)
        return metrics

    first, times = timed(call, args)
    flops = train_flops_per_image(program.compute_cfg) * batch
    if images:
        tokenize = jax.jit(lambda s, img: nnx.merge(tok_graph, s).img_to_idx(img))
        flops += xla_flops(tokenize, tok_state, jax.ShapeDtypeStruct(shapes["image"].shape, jnp.float32))
    return {"times": times, "first_loss": float(first["loss"]), "compile_s": compile_s, "flops": flops}


def run_side(args, config, vae_cfg, var_cfg) -> dict:
    """One side of one comparison (``--side``), in this process."""
    torch, models = import_official(args.official)
    torch.set_num_threads(args.threads)
    off_vae, off_var = build_official(torch, models, vae_cfg, var_cfg)
    what, batch, images = args.what[0], args.batch[0], args.train_input[0] == "images"
    if args.side == "official":
        if what == "sample":
            line = official_sample(torch, off_var, batch, args)
        else:
            line = official_train(torch, off_vae, off_var, var_cfg, batch, images, config, args)
        line["torch_threads"] = torch.get_num_threads()
    else:
        vae, var = vae_from_official(state_dict(off_vae), vae_cfg), var_from_official(state_dict(off_var), var_cfg)
        diff = logits_difference(torch, off_vae, off_var, vae, var, np.random.default_rng(0))
        if not diff < LOGITS_TOL:
            sys.exit(f"the converted models do not compute what the official ones do: teacher-forced logits differ "
                     f"by {diff:.3g} (tolerance {LOGITS_TOL})")
        del off_vae, off_var
        gc.collect()  # nothing of the official side stays in memory beside ours
        line = ours_sample(vae, var, batch, args) if what == "sample" else ours_train(vae, var, batch, images, config,
                                                                                      args)
        line.update(logits_max_abs_diff=diff, torch=torch.__version__)
    line["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return line


def side_process(side: str, what: str, batch: int, kind: str) -> dict:
    """Run one side in a fresh process of this script; its JSON line."""
    argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--side", side, "--what", what,
            "--batch", str(batch), "--train-input", kind]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        sys.exit(f"the {side} side of {what} at batch {batch} failed (exit status {done.returncode}); its error is "
                 f"above")
    return json.loads(lines[-1])


def compare(what: str, batch: int, kind: str, args, floor: float, label_smooth: float) -> dict:
    """``--rounds`` processes of each side, alternately → the comparison's line."""
    runs = {"official": [], "ours": []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(side_process(side, what, batch, kind))
    official_s = statistics.median(t for r in runs["official"] for t in r["times"])
    ours_s = statistics.median(t for r in runs["ours"] for t in r["times"])
    ours = runs["ours"][0]
    gflop = ours["flops"] / 1e9
    line = {"logits_max_abs_diff": ours["logits_max_abs_diff"], "torch": ours["torch"],
            "torch_threads": runs["official"][0]["torch_threads"]}
    if what == "sample":
        line.update(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
    else:
        line.update(input=kind, first_loss={"official": round(runs["official"][0]["first_loss"], 4),
                                            "ours": round(ours["first_loss"], 4)},
                    optimizer={"lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP,
                               "label_smooth": float(label_smooth)})
    return {**line, "official_s": round(official_s, 4), "ours_s": round(ours_s, 4),
            "official_s_per_img": round(official_s / batch, 4), "ours_s_per_img": round(ours_s / batch, 4),
            "ratio": round(official_s / ours_s, 3),
            "ours_compile_s": round(statistics.median(r["compile_s"] for r in runs["ours"]), 2),
            "model_gflop": round(gflop, 2), "floor_gflop_per_s": floor,
            "fraction_of_floor": {"official": round(gflop / official_s / floor, 3),
                                  "ours": round(gflop / ours_s / floor, 3)},
            "peak_rss_gb": {side: round(max(r["peak_rss_gb"] for r in rs), 2) for side, rs in runs.items()},
            "times": {side: [[round(t, 3) for t in r["times"]] for r in rs] for side, rs in runs.items()}}


def main() -> None:
    xla_cpu.prepare_command()  # as the var-jax command does
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of FoundationVision/VAR (holds models/ and dist.py)")
    ap.add_argument("--config", default="var_d16", help="name in configs/ or a path")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls in each process")
    ap.add_argument("--rounds", type=int, default=1, help="processes of each side, alternately")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls in each process, first")
    ap.add_argument("--what", nargs="+", choices=("sample", "train"), default=["sample", "train"])
    ap.add_argument("--train-input", nargs="+", choices=("tokens", "images"), default=["tokens", "images"],
                    help="train: token maps given, or the tokenizer inside the step")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--side", choices=("official", "ours"), help=argparse.SUPPRESS)  # set for the processes it starts
    args, unknown = ap.parse_known_args()
    overrides, rest = split_overrides(unknown)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)} (config overrides look like --config.key=value)")
    if min(args.batch) < 1 or min(args.repeats, args.rounds, args.warmup, args.threads) < 1:
        ap.error("--batch, --repeats, --rounds, --warmup and --threads must be at least 1")

    jax.config.update("jax_platforms", "cpu")  # both sides on the CPU
    loaded = load_config(args.config, overrides)
    if "vae" not in loaded or "var" not in loaded:
        ap.error(f"--config {args.config} has no tokenizer and VAR (its vae and var sections)")
    config = var_training()
    config.update(dict(loaded))  # a model-only config gets the default recipe
    # The comparison's recipe on our side: float32, the optimizer above at a constant lr, no drop-path or dropout.
    config.train.update(compute_dtype="float32", lr=LR, lr_schedule="constant", b1=BETAS[0], b2=BETAS[1],
                        wd=WEIGHT_DECAY, wd_end=-1.0, grad_clip=GRAD_CLIP, pg=0.0)
    config.var.update(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, dtype="float32")
    vae_cfg, var_cfg = model_configs(config)
    vae_cfg = dataclasses.replace(vae_cfg, dtype="float32")
    if "sample" in args.what and args.top_k > var_cfg.vocab_size:
        ap.error(f"--top-k {args.top_k} is more than the vocabulary ({var_cfg.vocab_size}); torch.topk refuses it")
    if args.side:
        print(json.dumps(run_side(args, config, vae_cfg, var_cfg)), flush=True)
        return

    import_official(args.official)  # a missing torch or checkout is said before any process starts
    floor = floors()["float32"]
    common = {"config": args.config, "dtype": "float32", "repeats": args.repeats, "rounds": args.rounds,
              "drop": {"drop_path_rate": 0.0, "dropout": 0.0, "cond_drop_rate": var_cfg.cond_drop_rate},
              "jax": jax.__version__, "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    jobs = [("sample", "tokens")] if "sample" in args.what else []
    jobs += [("train", kind) for kind in args.train_input] if "train" in args.what else []
    for batch in args.batch:
        for what, kind in jobs:
            line = compare(what, batch, kind, args, floor, config.train.label_smooth)
            # the 1-minute load average: a timing taken beside other work is no comparison (torch's
            # threads wait for each other at every operation, so it suffers most)
            print(json.dumps({"bench": f"vs_official_{what}", "batch": batch, **common, **line,
                              "load_average": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
