"""The ``var-jax`` command."""
from __future__ import annotations

import argparse
import pathlib
import sys


def _convert(args: argparse.Namespace, overrides: list[str]) -> None:
    from var_jax import convert
    from var_jax.checkpoint import load_pretrained, save_pretrained

    if args.to_official:
        if not args.ckpt:
            raise ValueError("--to-official needs --ckpt DIR (a var-jax model directory)")
        models = load_pretrained(args.ckpt)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, model, export in (("vae", models.vae, convert.vae_to_official),
                                    ("var", models.var, convert.var_to_official)):
            if model is not None:
                path = out / f"{name}.pth"
                if path.exists():
                    raise FileExistsError(f"{path} exists; choose another --out (nothing was overwritten)")
                convert.write_pth(export(model), str(path))
                print(f"wrote {path}")
        return

    if not (args.vae or args.var):
        raise ValueError("give --vae FILE.pth, --var FILE.pth or both (or --to-official --ckpt DIR)")
    for path in (args.vae, args.var):
        if path and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    var_sd = convert.read_pth(args.var, "var_wo_ddp") if args.var else None
    vae_sd = convert.read_pth(args.vae, "vae_local") if args.vae else None
    if args.config:
        from var_jax.config import load_config, model_configs
        vae_cfg, var_cfg = model_configs(load_config(args.config, overrides))
    else:
        from var_jax.config import PATCH_NUMS
        var_cfg = convert.infer_var_config(var_sd) if var_sd is not None else None
        patch_nums = var_cfg.patch_nums if var_cfg else PATCH_NUMS[args.img_size]
        vae_cfg = convert.infer_vae_config(vae_sd, patch_nums) if vae_sd is not None else None
    vae = convert.vae_from_official(vae_sd, vae_cfg) if vae_sd is not None else None
    var = convert.var_from_official(var_sd, var_cfg) if var_sd is not None else None
    out = save_pretrained(args.out, vae=vae, var=var)
    print(f"wrote {out} (load it with var_jax.load_pretrained({str(out)!r}))")


def _parity(args: argparse.Namespace, overrides: list[str]) -> int:
    from var_jax import parity
    return parity.main([args.fixture])


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

    p = sub.add_parser("parity", help="check against tensors recorded from the official code")
    p.add_argument("fixture")
    p.set_defaults(run=_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        code = args.run(args, overrides)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"var-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
