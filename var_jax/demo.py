"""The demo (`make demo`): everything on the CPU from the embedded images, measured.

    python -m var_jax.demo [--config configs/demo_digits.py] [--out outputs/demo] [--config.key=value ...]

1. trains the tokenizer of the config's ``demo.tokenizer_config`` (configs/vqvae_digits.py);
2. writes the training images' token maps once (``demo.crops`` random crops each);
3. trains the VAR of the config from them;
4. draws ``demo.samples_per_class`` images of every class → ``samples.npz`` (``images`` uint8 NHWC,
   ``labels`` = the classes asked for) and ``samples_grid.png`` (one row per class);
5. in-paints the lower half of held-out images, conditioned on their class → ``inpainting.png``;
6. trains a small CNN on the held-out real images (which neither model saw) and measures the
   fraction of samples it labels as the class asked for → ``metrics.json`` (goal: ``demo.goal``);
7. draws the training curves → ``curves.png``.

Every stage resumes where an interrupted run stopped; run the same command again.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from var_jax.data.transforms import to_model_range

DEFAULT_CONFIG = "demo_digits"
DEFAULT_OUT = pathlib.Path("outputs") / "demo"


# -- the judge: a small CNN trained on held-out real images --------------------------------------------
class SmallCNN(nnx.Module):
    """Two strided 3×3 convolutions and a linear read-out (~60k parameters): enough for digits."""

    def __init__(self, num_classes: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 32, (3, 3), strides=2, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(64 * 8 * 8, num_classes, rngs=rngs)

    def __call__(self, images_uint8: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = to_model_range(images_uint8)
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        x = x.reshape(x.shape[0], -1)
        if dropout_key is not None:  # training: dropout 0.3 on the features
            x = jnp.where(jax.random.bernoulli(dropout_key, 0.7, x.shape), x / 0.7, 0.0)
        return self.out(x)


def _pad_to_36(images: np.ndarray) -> np.ndarray:
    """The shorter side to round(1.125·32) = 36 with Lanczos, as the training transform does, so a
    random 32-crop is the same augmentation the models were trained with."""
    from var_jax.data.transforms import resize_shorter
    return np.stack([np.asarray(resize_shorter(Image.fromarray(im), 32)) for im in images])


def _centre32(images36: np.ndarray) -> np.ndarray:
    o = (images36.shape[1] - 32) // 2
    return images36[:, o:o + 32, o:o + 32]


@functools.partial(jax.jit, static_argnames="graph")
def _predict(graph, state, x):
    return jnp.argmax(nnx.merge(graph, state)(x), axis=-1)


@dataclasses.dataclass
class Judge:
    model: SmallCNN
    real_accuracy: float = 0.0  # on real images it was not trained on

    def predict(self, images_uint8: np.ndarray, batch: int = 250) -> np.ndarray:
        graph, state = nnx.split(self.model)
        return np.concatenate([np.asarray(_predict(graph, state, jnp.asarray(images_uint8[i:i + batch])))
                               for i in range(0, len(images_uint8), batch)])


def train_judge(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                test_labels: np.ndarray, *, num_classes: int, steps: int, seed: int = 0, batch: int = 64) -> Judge:
    """The CNN trained on ``train_images`` (random 32-crops of the 36-pixel resize, i.e. shifts of up
    to ±2 pixels), scored on ``test_images`` (centre crops): its own accuracy on real images."""
    rng = np.random.default_rng(seed)
    padded = _pad_to_36(train_images)
    model = SmallCNN(num_classes, nnx.Rngs(seed))
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(3e-4, 3e-3, steps // 20, steps), weight_decay=1e-4)
    graph, params = nnx.split(model)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y, key):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graph, p)(x, key), y).mean()
        updates, opt = tx.update(jax.grad(loss_fn)(params), opt, params)
        return optax.apply_updates(params, updates), opt

    key = jax.random.key(seed)
    for i in range(steps):
        pick = rng.integers(0, len(padded), batch)
        dy, dx = rng.integers(0, padded.shape[1] - 31, 2)
        x = padded[pick, dy:dy + 32, dx:dx + 32]
        params, opt = step(params, opt, jnp.asarray(x), jnp.asarray(train_labels[pick]), jax.random.fold_in(key, i))
    nnx.update(model, params)
    judge = Judge(model)
    judge.real_accuracy = float(np.mean(judge.predict(_centre32(_pad_to_36(test_images))) == test_labels))
    return judge


# -- pictures ----------------------------------------------------------------------------------------------
def training_curves(tokenizer_log: pathlib.Path, var_log: pathlib.Path, path: pathlib.Path) -> None:
    """The tokenizer's reconstruction loss and the VAR's training/validation loss and accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(log: pathlib.Path, key: str):
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        pts = [(r["step"], r[key]) for r in rows if key in r]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(*series(tokenizer_log, "loss/rec"), label="reconstruction (L1)")
    ax.plot(*series(tokenizer_log, "loss/vq"), label="VQ")
    ax.set(title="tokenizer", xlabel="step", yscale="log")
    ax.legend()
    ax = axes[1]
    for key, label in (("train/L_mean", "train, all tokens"), ("train/L_tail", "train, last scale"),
                       ("val/L_mean", "held-out, all tokens"), ("val/L_tail", "held-out, last scale")):
        xs, ys = series(var_log, key)
        ax.plot(xs, ys, "o-" if key.startswith("val") else "-", label=label)
    ax.set(title="VAR cross-entropy", xlabel="step")
    ax.legend()
    ax = axes[2]
    for key, label in (("train/acc_mean", "train, all tokens"), ("train/acc_tail", "train, last scale"),
                       ("val/acc_mean", "held-out, all tokens")):
        xs, ys = series(var_log, key)
        ax.plot(xs, ys, "o-" if key.startswith("val") else "-", label=label)
    ax.set(title="VAR token accuracy (%)", xlabel="step")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- the whole demo ----------------------------------------------------------------------------------------
def run(config, out: str | pathlib.Path) -> dict:
    from var_jax.data import embedded
    from var_jax.image_io import labelled_grid, save_png
    from var_jax.sample import SamplingSettings, Sampler, box_keep_mask, edit
    from var_jax.train.var_trainer import VARTrainer, check_config
    from var_jax.two_stage import TOKENIZER_RUN, tokenizer_and_tokens

    out = pathlib.Path(out)
    demo = config.demo
    check_config(config)  # a bad demo config fails before the tokenizer trains
    timings, t_start = {}, time.perf_counter()

    vae, stages = tokenizer_and_tokens(config, out, tokenizer_config=demo.tokenizer_config, crops=int(demo.crops))
    timings.update(stages)
    tokenizer_run, name = out / TOKENIZER_RUN, config.data.name

    tic = time.perf_counter()
    trainer = VARTrainer(config, out / "var_run", tokenizer=vae)
    trainer.train()
    var = trainer.var_model()
    timings["var_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    num_classes = var.cfg.num_classes
    settings = SamplingSettings(cfg=float(demo.cfg), top_k=int(demo.top_k), top_p=float(demo.top_p))
    sampler = Sampler(vae, var, settings)
    per_class = int(demo.samples_per_class)
    labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
    batch = 10 * num_classes
    images = np.concatenate([np.asarray(sampler(labels[i:i + batch], seed=int(config.train.seed) + i).images)
                             for i in range(0, len(labels), batch)])
    np.savez_compressed(out / "samples.npz", images=images, labels=labels)
    class_names = embedded.load(name, "heldout").class_names
    rows = [images[labels == c][:10] for c in range(num_classes)]
    save_png(labelled_grid(rows, [class_names[c][:10] for c in range(num_classes)]), out / "samples_grid.png")
    timings["sample_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    heldout = embedded.load(name, "heldout")
    picks = np.array([np.flatnonzero(heldout.labels == c)[0] for c in range(num_classes)])
    real = _centre32(_pad_to_36(heldout.images[picks]))
    size = int(config.img_size)
    keep = box_keep_mask((0, size / 2, size, size), size, var.cfg.patch_nums[-1], "inpaint")  # redo the lower half
    painted = np.asarray(edit(vae, var, to_model_range(jnp.asarray(real)), keep,
                              heldout.labels[picks].tolist(), seed=int(config.train.seed), settings=settings).images)
    masked = real.copy()
    masked[:, size // 2:] = 128
    save_png(labelled_grid([real, masked, painted], ["real", "masked", "painted"]), out / "inpainting.png")
    timings["inpaint_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    reals = embedded.load(name, "train")
    judge = train_judge(heldout.images, heldout.labels, reals.images, reals.labels, num_classes=num_classes,
                        steps=int(demo.classifier_steps), seed=int(config.train.seed))
    predicted = judge.predict(images)
    agreement = float(np.mean(predicted == labels))
    per_class_agreement = [float(np.mean(predicted[labels == c] == c)) for c in range(num_classes)]
    timings["classifier_s"] = time.perf_counter() - tic

    training_curves(tokenizer_run / "metrics.jsonl", out / "var_run" / "metrics.jsonl", out / "curves.png")
    timings["total_s"] = time.perf_counter() - t_start
    last_val = trainer.validate()
    metrics = {
        "dataset": name,
        "class_agreement": agreement,
        "goal": float(demo.goal) if demo.goal > 0 else None,
        "goal_met": agreement >= float(demo.goal) if demo.goal > 0 else None,
        "per_class_agreement": dict(zip(class_names, per_class_agreement)),
        "judge_accuracy_on_real_images": judge.real_accuracy,
        "judge": f"small CNN trained {int(demo.classifier_steps)} steps on the {len(heldout.images)} held-out real "
                 f"images; accuracy measured on the {len(reals.images)} real training images",
        "sampling": {"cfg": float(demo.cfg), "top_k": int(demo.top_k), "top_p": float(demo.top_p),
                     "samples": int(len(labels)), "per_class": per_class},
        "var": {"depth": var.cfg.depth, "width": var.cfg.embed_dim, "steps": trainer.step_count(),
                "batch_size": int(config.train.batch_size),
                "parameters": int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(var, nnx.Param)))),
                "heldout": {k: v for k, v in last_val.items() if "/" not in k}},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "devices": f"{jax.device_count()}× {jax.devices()[0].device_kind}",
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    from var_jax.config import load_config, split_overrides
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="python -m var_jax.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="demo config (default: configs/demo_digits.py)")
    parser.add_argument("--out", default=None, help="output directory (default: outputs/demo, or "
                                                    "outputs/demo_<name> for another config)")
    args = parser.parse_args(rest)
    try:
        config = load_config(args.config, overrides)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    if "demo" not in config:
        print(f"demo: error: {args.config} has no 'demo' section (see configs/demo_digits.py)", file=sys.stderr)
        return 2
    stem = pathlib.Path(args.config).stem
    out = pathlib.Path(args.out) if args.out else (
        DEFAULT_OUT if stem == DEFAULT_CONFIG else DEFAULT_OUT.with_name(f"demo_{stem.removeprefix('demo_')}"))
    metrics = run(config, out)
    print(json.dumps({k: metrics[k] for k in ("class_agreement", "goal", "goal_met", "judge_accuracy_on_real_images",
                                              "timings_s")}, indent=1))
    print(f"wrote {out}/: samples.npz, samples_grid.png, inpainting.png, curves.png, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
