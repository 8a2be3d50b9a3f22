"""The ``var-jax`` command."""
from __future__ import annotations

import argparse
import pathlib
import sys


def _convert(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax.checkpoint import from_official, to_official
    if args.to_official:
        if not args.ckpt:
            raise ValueError("--to-official needs --ckpt DIR (a var-jax model directory)")
        to_official(args.ckpt, args.out)
        return
    from_official(args.out, vae=args.vae, var=args.var, config=args.config, overrides=overrides, img_size=args.img_size)


def _load_models(args):
    if bool(args.ckpt) == bool(args.model):
        from var_jax.hub import RELEASED
        raise ValueError(f"give --ckpt DIR (a var-jax model directory) or --model NAME (a released model: "
                         f"{', '.join(RELEASED)})" + (", not both" if args.ckpt else ""))
    if args.model:
        from var_jax.hub import from_pretrained
        vae, var, _ = from_pretrained(args.model, dtype=args.dtype)
        return vae, var
    from var_jax.checkpoint import load_pretrained
    vae, var, _ = load_pretrained(args.ckpt, dtype=args.dtype)
    if vae is None or var is None:
        raise ValueError(f"{args.ckpt} must hold both a tokenizer and a VAR (it has "
                         f"{'a tokenizer' if vae is not None else 'a VAR' if var is not None else 'neither'})")
    return vae, var


def _settings(args, vocab_size: int | None = None):
    """The sampling flags; those not given are ``default_settings`` of the model's vocabulary (checked
    first with the released vocabulary, before the models are loaded)."""
    from var_jax.sample import RELEASED_VOCAB, default_settings
    given = {k: getattr(args, k) for k in ("cfg", "top_k", "top_p") if getattr(args, k) is not None}
    return default_settings(vocab_size or RELEASED_VOCAB, **given, more_smooth=args.more_smooth)


def _positive(**values) -> None:
    for flag, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


def _sample(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax.sample import Sampler

    from var_jax.image_io import check_output_dir, check_output_file

    _settings(args)  # checked before the models are loaded
    _positive(per_class=args.per_class, batch=args.batch, num=args.num)
    if args.num:
        if not args.npz:
            raise ValueError("--num writes an evaluation file: give --npz OUT.npz")
        check_output_file(args.npz, "--npz")
        from var_jax import cluster, parallel
        from var_jax.sample_npz import write_evaluation_npz
        mesh_sizes = parallel.parse_mesh(args.mesh)  # checked before anything starts
        cluster.initialize_distributed()  # a no-op on one host; all processes share the work
        vae, var = _load_models(args)
        mesh = parallel.make_mesh({"mesh": mesh_sizes})
        # One device needs no mesh, and without one a CPU sampler holds its kernels per layer (faster).
        sampler = Sampler(vae, var, _settings(args, var.cfg.vocab_size), mesh=mesh if mesh.size > 1 else None)
        del vae, var  # the sampler holds what it needs
        write_evaluation_npz(sampler, args.npz, num=args.num, per_class=args.per_class, batch=args.batch,
                             seed=args.seed)
        return
    if not args.out:
        raise ValueError("give --out GRID.png (or --num N --npz OUT.npz for an evaluation set)")
    from var_jax.sample_files import parse_classes, write_grid
    classes = parse_classes(args.classes)
    check_output_file(args.out, "--out")  # outputs are checked before the work
    if args.png_dir:
        check_output_dir(args.png_dir, "--png-dir")
    if args.tokens:
        check_output_file(args.tokens, "--tokens")
    vae, var = _load_models(args)
    sampler = Sampler(vae, var, _settings(args, var.cfg.vocab_size))
    del vae, var  # on a CPU the sampler holds its own per-layer copies of the block kernels: free the stacked ones
    write_grid(sampler, classes, args.out, per_class=args.per_class, batch=args.batch, seed=args.seed,
               png_dir=args.png_dir, tokens=args.tokens)


def _edit(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax.image_io import check_output_file
    from var_jax.sample_files import edit_file, parse_box

    _settings(args)  # checked before the models are loaded
    if args.mode == "edit" and args.cls is None:
        raise ValueError("--mode edit regenerates the box with a class: give --class K")
    box = parse_box(args.box)
    if not pathlib.Path(args.image).is_file():
        raise FileNotFoundError(f"no such image: {args.image}")
    check_output_file(args.out, "--out")
    if args.tokens:
        check_output_file(args.tokens, "--tokens")
    vae, var = _load_models(args)
    edit_file(vae, var, args.image, box, args.out, mode=args.mode, cls=args.cls, seed=args.seed,
              settings=_settings(args, var.cfg.vocab_size), tokens=args.tokens)


def _parity(args: argparse.Namespace, overrides: list[str]) -> int:
    from var_jax import parity
    return parity.main([args.fixture])


# -- evaluation: eval, scaling-fit ---------------------------------------------------------------------
def _eval(args: argparse.Namespace, overrides: list[str]) -> None:
    import json
    import os
    import warnings

    from var_jax.eval.evaluate import EvaluationWarning, evaluate_files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        result = evaluate_files(args.samples, args.ref, args.inception or os.environ.get("VAR_JAX_INCEPTION"),
                                batch=args.batch, save_inception=args.save_inception, save_ref=args.save_ref)
    for w in caught:
        print(f"var-jax eval: warning: {w.message}", file=sys.stderr)
    print(json.dumps(result))


def _scaling_fit(args: argparse.Namespace, overrides: list[str]) -> None:
    import json

    from var_jax.eval.scaling import scaling_fit
    print(json.dumps(scaling_fit(args.results, args.out)))


def _scaling_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from var_jax.config import load_config
    from var_jax.scaling_sweep import SweepStopped, check_sweep, run_sweep
    from var_jax.train.loop import NonFiniteLoss

    config = load_config(args.config, overrides)
    check_sweep(config)  # a bad sweep fails before anything trains
    try:
        result = run_sweep(config, args.workdir)
    except (SweepStopped, NonFiniteLoss) as e:
        print(f"var-jax scaling-sweep: stopped: {e}", file=sys.stderr)
        return 3
    print(json.dumps({k: result[k] for k in ("fits", "num_models", "trained")}))
    print(f"wrote {result['results']} and {result['plot']}")
    return 0


RUN_DIR_HELP = "run directory; an existing run in it is resumed"


def _add_run_args(p: argparse.ArgumentParser, workdir_help: str = RUN_DIR_HELP) -> None:
    p.add_argument("--config", required=True, help="a config name in configs/ or a path to one")
    p.add_argument("--workdir", required=True, help=workdir_help)


def _add_eval_commands(sub) -> None:
    from var_jax.eval.inception_weights import PYTORCH_FID_URL
    p = sub.add_parser("eval", help="FID, IS, precision and recall of samples against a reference",
                       description="Evaluate an ADM-format sample file (arr_0: uint8 (N, H, W, 3), as `var-jax sample "
                                   "--num N --npz` writes) against an ADM reference batch "
                                   "(VIRTUAL_imagenet256_labeled.npz), an .npz from --save-ref, or a folder of real "
                                   "images, with the FID Inception-v3.  Prints one JSON line: FID, IS (5,000-image "
                                   "splits), precision and recall (k=3), and the image counts.")
    p.add_argument("--samples", required=True, help="sample .npz (arr_0 uint8 NHWC)")
    p.add_argument("--ref", required=True, help="reference .npz (mu/sigma, pool_3 features or arr_0 images) or a "
                                                "folder of images (resized and centre-cropped to the samples' size)")
    p.add_argument("--inception", help="Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                                       f"(download it once from {PYTORCH_FID_URL}; read without torch), a TorchScript "
                                       ".pt (pool features only, no IS; needs torch) or a --save-inception .npz "
                                       "(default: $VAR_JAX_INCEPTION)")
    p.add_argument("--batch", type=int, default=64, help="images per compiled call (default 64)")
    p.add_argument("--save-inception", help="also write the converted weights as .npz (loads without torch)")
    p.add_argument("--save-ref", help="also write the reference's mu, sigma and pool_3 features as .npz for reuse")
    p.set_defaults(run=_eval)

    p = sub.add_parser("scaling-fit", help="power-law fits of test loss / token error vs parameters and compute",
                       description="Fit L = (beta*X)^alpha in log-log space for X = parameters and X = training "
                                   "compute (PF-days), for each of L_last, L_avg, Err_last, Err_avg in a JSON-lines "
                                   "file with one trained model per line (format: var_jax/eval/scaling.py).  Prints "
                                   "one JSON line with alpha, beta and Pearson r per fit, and draws a log-log plot.")
    p.add_argument("results", help="RESULTS.jsonl")
    p.add_argument("--out", help="plot PNG (default: RESULTS_scaling.png next to the results file)")
    p.set_defaults(run=_scaling_fit)

    p = sub.add_parser("scaling-sweep", help="train VARs of several depths and fit scaling laws to their test metrics",
                       description="Train one VAR per depth of the config's sweep section (configs/scaling_digits.py) "
                                   "on token maps written once, measure each one's held-out L_last, L_avg, Err_last "
                                   "and Err_avg, count its parameters and training FLOPs, append a line per model "
                                   "to WORKDIR/results.jsonl, then fit and plot as scaling-fit does "
                                   "(WORKDIR/scaling.png). Resumable: depths already in results.jsonl are skipped. "
                                   "--config.key=value overrides the config, e.g. --config.sweep.depths=1,2,3 "
                                   "--config.tokenizer=DIR (an existing tokenizer instead of training one).")
    _add_run_args(p, "sweep directory; a sweep in it is resumed")
    p.set_defaults(run=_scaling_sweep)


def _add_plan_command(sub) -> None:
    from var_jax import plan
    p = sub.add_parser("plan", help="per-device memory of training and sampling on a mesh, before renting it",
                       description="Compile the VAR train step (and, with --sample-batch, the sampler) for a mesh "
                                   "on fake CPU devices, or with --topology by the TPU compiler for a TPU slice (no "
                                   "TPU needed), and print the per-device bytes of parameters, optimizer state and "
                                   "temporaries from the compiled programs; with --topology also whether it fits, the "
                                   "model FLOPs and a step-time bound, and one JSON line. --config.key=value "
                                   "overrides the config (e.g. --config.var.remat=full).")
    plan.build_parser(p)
    p.set_defaults(run=plan.run)


# -- VAR training: train, tokenize ---------------------------------------------------------------------
def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from var_jax.config import load_config
    from var_jax.cluster import initialize_distributed

    config = load_config(args.config, overrides)  # a bad config fails before anything starts
    initialize_distributed()
    from var_jax.train.loop import NonFiniteLoss
    from var_jax.train.var_trainer import train_var
    try:
        result = train_var(config, args.workdir)
    except NonFiniteLoss as e:
        print(f"var-jax train: stopped: {e}", file=sys.stderr)
        return 3
    return _stopped(result)


def _stopped(result: dict) -> int:
    """A training run's exit status: 0 when it ran to its end, 128 + the signal's number when a
    signal stopped it (143 SIGTERM, 130 Ctrl-C), so that schedulers see it did not finish."""
    if not result["stopped_by"]:
        return 0
    from var_jax.train.preemption import exit_code
    print(f"stopped at step {result['step']} by {result['stopped_by']}; run the same command to resume",
          file=sys.stderr)
    return exit_code(result["stopped_by"])


def _tokenize(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax.config import load_config
    from var_jax.two_stage import tokenize
    tokenize(load_config(args.config, overrides), args.out, crops=args.crops, batch=args.batch)
    print(f"train on them with --config.data.tokens={args.out}")


def _add_train_commands(sub) -> None:
    p = sub.add_parser("train", help="train a VAR (resumes a run in --workdir)",
                       description="Train a VAR with the official recipe (configs/var_d16.py ... var_d36s_512.py, "
                                   "demo_digits.py); --config.key=value overrides the config, e.g. "
                                   "--config.tokenizer=DIR --config.data.root=DIR --config.mesh.fsdp=8. The work "
                                   "directory gets checkpoints/, metrics.jsonl, tensorboard/, samples/ and, at the end, "
                                   "model/ (for var-jax sample). SIGTERM or Ctrl-C saves a checkpoint and exits with "
                                   "status 143 or 130; run the same command to resume.")
    _add_run_args(p)
    p.set_defaults(run=_train)

    p = sub.add_parser("tokenize", help="write a training set's token maps once, for training without the encoder",
                       description="Tokenize the training images of a VAR config (its data section and tokenizer) "
                                   "with random crops as in training, into a directory that "
                                   "--config.data.tokens=DIR trains from. Resumable; an existing directory with the "
                                   "same settings is reused.")
    p.add_argument("--config", required=True, help="a config name in configs/ or a path to one")
    p.add_argument("--out", required=True, help="the token directory to write")
    p.add_argument("--crops", type=int, default=1, help="random crops per image (default 1)")
    p.add_argument("--batch", type=int, default=64, help="images per compiled call (default 64)")
    p.set_defaults(run=_tokenize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="var-jax", description="VAR (next-scale prediction) in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="official .pth files <-> a var-jax model directory",
                       description="Convert official checkpoints (vae_ch160v4096z32.pth, var_d16.pth, ...) into a "
                                   "directory that var_jax.load_pretrained loads, or back with --to-official. "
                                   "The configuration is read off the state dicts unless --config is given; "
                                   "--config.key=value overrides it.")
    p.add_argument("--vae", help="official VQVAE .pth")
    p.add_argument("--var", help="official VAR .pth (a bare state dict or an ar-ckpt trainer file)")
    p.add_argument("--out", required=True, help="new directory to write (or, with --to-official, a folder for .pth)")
    p.add_argument("--config", help="a config name in configs/ or a path, instead of reading it off the weights")
    p.add_argument("--img-size", type=int, default=256, choices=(256, 512, 1024),
                   help="patch schedule for a tokenizer converted without a VAR (default 256)")
    p.add_argument("--to-official", action="store_true", help="write vae.pth / var.pth from --ckpt")
    p.add_argument("--ckpt", help="var-jax model directory (with --to-official)")
    p.set_defaults(run=_convert)

    def sampling_options(p):
        from var_jax.config import COMPUTE_DTYPES
        p.add_argument("--ckpt", help="var-jax model directory (from `var-jax convert` or training)")
        p.add_argument("--model", help="a released model, downloaded from the Hugging Face Hub and converted once: "
                                       "var_d16, var_d20, var_d24, var_d30 (256 px) or var_d36 (512 px)")
        p.add_argument("--cfg", type=float, help="classifier-free guidance at the last scale (default 1.5)")
        p.add_argument("--top-k", type=int, help="0 = off (default: 900 of the released 4,096 codes, the same share "
                                                  "of another codebook, e.g. 112 of 512)")
        p.add_argument("--top-p", type=float, help="0 = off (default 0.96)")
        p.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax smoothing (visualisation only)")
        p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images (default 0)")
        p.add_argument("--dtype", default=None, choices=COMPUTE_DTYPES,
                       help="compute dtype, e.g. bfloat16 on GPU/TPU (default float32)")

    p = sub.add_parser("sample", help="class-conditional samples: a labelled grid, or an evaluation .npz",
                       description="Sample images. With --classes/--per-class: a labelled grid PNG (one row per "
                                   "class). With --num N --npz OUT: N images, --per-class of each class in order, "
                                   "in the ADM evaluation format (arr_0 uint8 NHWC, labels); resumable.")
    sampling_options(p)
    p.add_argument("--classes", help="comma-separated class ids; -1 = unconditional (default: 8 random classes)")
    p.add_argument("--per-class", type=int, default=4, help="images per class (default 4)")
    p.add_argument("--batch", type=int, default=None, help="images per compiled call (default: all at once; 64 with --num)")
    p.add_argument("--out", help="grid PNG")
    p.add_argument("--png-dir", help="also write one PNG per image here")
    p.add_argument("--tokens", help="also write the token maps to this .npz")
    p.add_argument("--num", type=int, help="number of images for an evaluation set")
    p.add_argument("--npz", help="evaluation output (.npz) with --num")
    p.add_argument("--mesh", default="", help="with --num: devices as data=..,fsdp=..,model=.. (default: every "
                                               "device of every process on data; fsdp/model shard the parameters)")
    p.set_defaults(run=_sample)

    p = sub.add_parser("edit", help="zero-shot in-painting, out-painting and class-conditional editing",
                       description="Regenerate part of an image: inpaint (the box, unconditional), outpaint "
                                   "(everything outside the box) or edit (the box, with --class).")
    sampling_options(p)
    p.add_argument("--image", required=True, help="the image to edit (resized and centre-cropped to the model's size)")
    p.add_argument("--box", required=True, help="x0,y0,x1,y1 in pixels of the model-sized image")
    p.add_argument("--mode", choices=("inpaint", "outpaint", "edit"), default="inpaint")
    p.add_argument("--class", dest="cls", type=int, help="class for --mode edit (default: unconditional)")
    p.add_argument("--out", required=True, help="the edited image (PNG)")
    p.add_argument("--tokens", help="also write the result's and the image's token maps and the keep mask (.npz)")
    p.set_defaults(run=_edit)

    p = sub.add_parser("train-tokenizer", help="train the multi-scale VQ tokenizer (resumes a run in --workdir)",
                       description="Train a tokenizer from a config (configs/vqvae_digits.py, vqvae_emoji.py, "
                                   "vqvae_f16.py); --config.key=value overrides it. The work directory gets "
                                   "checkpoints/, metrics.jsonl, tensorboard/, eval/*.png and, at the end, "
                                   "tokenizer/ (a model directory for load_pretrained and the sampler).")
    _add_run_args(p)

    def _train_tokenizer(args: argparse.Namespace, overrides: list[str]) -> int:
        from var_jax.config import load_config
        from var_jax.train.loop import NonFiniteLoss
        from var_jax.train.tokenizer_trainer import train_tokenizer
        try:
            return _stopped(train_tokenizer(load_config(args.config, overrides), args.workdir))
        except NonFiniteLoss as e:
            print(f"var-jax train-tokenizer: stopped: {e}", file=sys.stderr)
            return 3
    p.set_defaults(run=_train_tokenizer)

    p = sub.add_parser("parity", help="check against tensors recorded from the official code")
    p.add_argument("fixture")
    p.set_defaults(run=_parity)
    _add_eval_commands(sub)
    _add_plan_command(sub)
    _add_train_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command line (not a call from Python): see xla_cpu.prepare_command
        from var_jax import xla_cpu
        xla_cpu.prepare_command()
    from var_jax.config import split_overrides
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    try:
        if not getattr(args, "topology", None):  # a program compiled for an absent TPU cannot be loaded back
            from var_jax import compile_cache
            compile_cache.enable()
        code = args.run(args, overrides)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"var-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop's steps (those save and return)
        print(f"\nvar-jax {args.command}: interrupted (what was written before stays; a training run resumes "
              f"from its last checkpoint)", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
