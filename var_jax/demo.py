"""The demo (`make demo`): everything on the CPU from the embedded images, measured.

    python -m var_jax.demo [--config configs/demo_digits.py] [--seed N] [--out outputs/demo] [--config.key=value ...]

1. trains the tokenizer of the config's ``demo.tokenizer_config`` (configs/vqvae_digits.py);
2. writes the training images' token maps once (``demo.crops`` random crops each);
3. trains the VAR of the config from them;
4. draws ``demo.samples_per_class`` images of every class → ``samples.npz`` (``images`` uint8 NHWC,
   ``labels`` = the classes asked for), ``samples_grid.png`` (one row per class) and
   ``pyramid.png`` (one sample per class decoded after each scale, 1×1 at the top to the last);
5. in-paints the lower half of held-out images, conditioned on their class → ``inpainting.png``;
6. trains a small CNN on the held-out real images (which neither model saw) and measures the
   fraction of samples it labels as the class asked for, and FID and precision/recall of the
   samples against the held-out images in the CNN's feature space → ``metrics.json`` (goal:
   ``demo.goal``), with each stage's wall-clock and CPU seconds and the machine's load;
7. draws the training curves → ``curves.png``.

Every stage resumes where an interrupted run stopped; run the same command again.  ``--seed``
changes every random choice of the run (and its default output directory).  ``--choose-sampling``
trains (or resumes) stages 1–3, then prints, instead of measuring, how a selector that is not the
judge rates each guidance × top-p: how the config's sampling settings were chosen.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
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
    """Two strided 3×3 convolutions, a 128-wide hidden layer and a linear read-out (~550k
    parameters): enough for digits.  The hidden layer's activations are the feature space in which
    the demo measures FID and precision/recall."""

    FEATURES = 128

    def __init__(self, num_classes: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 32, (3, 3), strides=2, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
        self.hidden = nnx.Linear(64 * 8 * 8, self.FEATURES, rngs=rngs)
        self.out = nnx.Linear(self.FEATURES, num_classes, rngs=rngs)

    def features(self, images_uint8: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = to_model_range(images_uint8)
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        x = x.reshape(x.shape[0], -1)
        if dropout_key is not None:  # training: dropout 0.3 on the convolutions' output
            x = jnp.where(jax.random.bernoulli(dropout_key, 0.7, x.shape), x / 0.7, 0.0)
        return jax.nn.relu(self.hidden(x))

    def __call__(self, images_uint8: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return self.out(self.features(images_uint8, dropout_key))


def _pad_to_36(images: np.ndarray) -> np.ndarray:
    """The shorter side to round(1.125·32) = 36 with Lanczos, as the training transform does, so a
    random 32-crop is the same augmentation the models were trained with."""
    from var_jax.data.transforms import resize_shorter
    return np.stack([np.asarray(resize_shorter(Image.fromarray(im), 32)) for im in images])


def _centre32(images36: np.ndarray) -> np.ndarray:
    o = (images36.shape[1] - 32) // 2
    return images36[:, o:o + 32, o:o + 32]


@functools.partial(jax.jit, static_argnames="graph")
def _forward(graph, state, x):
    model = nnx.merge(graph, state)
    features = model.features(x)
    return jnp.argmax(model.out(features), axis=-1), features


@dataclasses.dataclass
class Judge:
    model: SmallCNN
    real_accuracy: float = 0.0  # on real images it was not trained on

    def __call__(self, images_uint8: np.ndarray, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
        """→ (predicted classes (N,), hidden features (N, SmallCNN.FEATURES))."""
        graph, state = nnx.split(self.model)
        out = [_forward(graph, state, jnp.asarray(images_uint8[i:i + batch]))
               for i in range(0, len(images_uint8), batch)]
        return np.concatenate([np.asarray(o[0]) for o in out]), np.concatenate([np.asarray(o[1]) for o in out])


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
    judge.real_accuracy = float(np.mean(judge(_centre32(_pad_to_36(test_images)))[0] == test_labels))
    return judge


# -- measuring the run -----------------------------------------------------------------------------------
class Stopwatch:
    """Each stage's wall-clock and CPU seconds (all of this process's threads) and the 1-minute load
    average at its end: on a shared machine the wall clock alone says little."""

    def __init__(self):
        self.wall, self.cpu, self.load, self._since = {}, {}, {}, None

    def start(self) -> None:
        self._since = (time.perf_counter(), time.process_time())

    def stop(self, stage: str) -> None:
        wall, cpu = self._since
        self.wall[stage], self.cpu[stage] = time.perf_counter() - wall, time.process_time() - cpu
        self.load[stage] = os.getloadavg()[0]

    def summary(self) -> dict:
        r = lambda d: {k: round(v, 1) for k, v in d.items()}  # noqa: E731
        return {"timings_s": r({**self.wall, "total": sum(self.wall.values())}),
                "cpu_s": r({**self.cpu, "total": sum(self.cpu.values())}),
                "load_average_1min": {k: round(v, 2) for k, v in self.load.items()}}


def _log_rows(log: pathlib.Path) -> list[dict]:
    """The rows of a training log (metrics.jsonl); none if there is no log."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def last_validation(log: pathlib.Path) -> dict:
    """The VAR's last held-out (teacher-forced) loss and accuracy in its training log, with its step."""
    last = next((r for r in reversed(_log_rows(log)) if "val/L_mean" in r), None)
    if last is None:
        return {}
    return {"step": last["step"], **{k.removeprefix("val/"): v for k, v in last.items()
                                     if k.startswith("val/") and k.count("/") == 1}}


# -- pictures ----------------------------------------------------------------------------------------------
def training_curves(tokenizer_log: pathlib.Path, var_log: pathlib.Path, path: pathlib.Path) -> None:
    """The tokenizer's reconstruction loss and the VAR's training/validation loss and accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(log: pathlib.Path, key: str):
        pts = [(r["step"], r[key]) for r in _log_rows(log) if key in r]
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


def feature_distances(judge: Judge, sample_features: np.ndarray, heldout_images: np.ndarray,
                      train_images: np.ndarray, seed: int = 0) -> dict:
    """FID and precision/recall (var_jax.eval.metrics) of the samples against the held-out real
    images, in the judge's hidden-layer feature space rather than Inception's, so comparable only
    within one run (each run trains its own judge).  The judge was trained on those held-out images, which pulls their
    features together: the same figures for as many real training images, which the judge never
    saw, are what real digits reach in this space (the floor)."""
    from var_jax.eval.metrics import frechet_distance, gaussian_stats, precision_recall
    reference = judge(heldout_images)[1]
    pick = np.random.default_rng(seed).choice(len(train_images), len(sample_features), replace=False)
    real_features = judge(_centre32(_pad_to_36(train_images[pick])))[1]

    def against_reference(features):
        precision, recall = precision_recall(reference, features)
        fid = frechet_distance(gaussian_stats(reference), gaussian_stats(features))
        return {"fid": fid, "precision": precision, "recall": recall}

    return {"space": f"the judge's hidden layer ({SmallCNN.FEATURES} features), not Inception's: a relative measure, "
                     f"comparable with the real images' figures below (each run trains its own judge)",
            "reference": f"the {len(reference)} held-out real images",
            "samples": against_reference(sample_features),
            f"real_training_images_{len(pick)}": against_reference(real_features)}


@functools.partial(jax.jit, static_argnames="graph")
def _decode_every_scale(graph, state, tokens):
    from var_jax.sample import to_uint8
    vae = nnx.merge(graph, state)
    return [to_uint8((vae.fhat_to_img(f) + 1) / 2) for f in vae.quantize.idx_to_fhat(tokens)]  # as sampling does


def decode_every_scale(vae, tokens: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-scale token maps (each (B, pn²)) → the image after each scale (SN arrays (B, H, W, 3) uint8):
    the image after scale k decodes f̂ accumulated over scales 1..k, as sampling accumulates it."""
    graph, state = nnx.split(vae)
    return [np.asarray(x) for x in _decode_every_scale(graph, state, [jnp.asarray(t, jnp.int32) for t in tokens])]


# -- the whole demo ----------------------------------------------------------------------------------------
def train_models(config, out: pathlib.Path, stages: Stopwatch):
    """Stages 1–3: the tokenizer, the token maps and the VAR (each resumes) → (tokenizer, VAR trainer,
    the two-stage timings)."""
    from var_jax.train.var_trainer import VARTrainer, check_config
    from var_jax.two_stage import tokenizer_and_tokens

    check_config(config)  # a bad demo config fails before the tokenizer trains
    stages.start()
    vae, two_stage_s = tokenizer_and_tokens(config, out, tokenizer_config=config.demo.tokenizer_config,
                                            tokenizer_overrides=[f"train.seed={int(config.train.seed)}"],
                                            crops=int(config.demo.crops))
    stages.stop("tokenizer_and_tokens")
    stages.start()
    trainer = VARTrainer(config, out / "var_run", tokenizer=vae)
    trainer.train()
    stages.stop("var")
    return vae, trainer, two_stage_s


def choose_sampling(config, out: str | pathlib.Path, cfgs: Sequence[float], top_ps: Sequence[float],
                    per_class: int) -> list[dict]:
    """The class agreement of every guidance × top-p, as a *selector* sees it: the judge's CNN, trained
    instead on the real training images (which the judge never sees), on samples drawn with other seeds
    than the measurement's.  The demo config's settings are chosen from this table, so the judge that
    reports the demo's agreement takes no part in choosing them.  Trains the run's models first (or
    resumes them); the run's measurement is left as it is."""
    from var_jax.data import embedded

    vae, trainer, _ = train_models(config, pathlib.Path(out), Stopwatch())
    var, seed, name = trainer.var_model(), int(config.train.seed), config.data.name
    reals, heldout = embedded.load(name, "train"), embedded.load(name, "heldout")
    selector = train_judge(reals.images, reals.labels, heldout.images, heldout.labels,
                           num_classes=var.cfg.num_classes, steps=int(config.demo.classifier_steps), seed=seed)
    labels = np.repeat(np.arange(var.cfg.num_classes), per_class).astype(np.int32)
    return selector_agreements(vae, var, lambda images: selector(images)[0], cfgs, top_ps, labels, seed=seed)


def selector_agreements(vae, var, selector, cfgs: Sequence[float], top_ps: Sequence[float], labels: np.ndarray, *,
                        seed: int) -> list[dict]:
    """For each guidance × top-p (top-k off), the fraction of ``labels``' samples (drawn from seed
    SWEEP_SEED + ``seed``) that ``selector`` (uint8 images → classes) gives the class asked for; each
    row is printed as it is measured."""
    from var_jax.sample import SamplingSettings, Sampler

    rows = []
    for cfg in cfgs:
        for top_p in top_ps:
            sampler = Sampler(vae, var, SamplingSettings(cfg=float(cfg), top_k=0, top_p=float(top_p)))
            images = np.asarray(sampler(labels, seed=SWEEP_SEED + seed).images)
            rows.append({"cfg": float(cfg), "top_p": float(top_p),
                         "selector_agreement": float(np.mean(selector(images) == labels))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# choose_sampling: the guidance and top-p values tried (top-p 0 = off), samples per class for each,
# and the seed its samples start from (the measurement's start from the run's seed).
SWEEP_GRID = ((2.0, 3.0, 4.0, 6.0, 8.0), (0.8, 0.9, 0.0))
SWEEP_PER_CLASS = 30
SWEEP_SEED = 1_000_000


def run(config, out: str | pathlib.Path) -> dict:
    from var_jax.checkpoint import load_pretrained
    from var_jax.data import embedded
    from var_jax.image_io import labelled_grid, save_png
    from var_jax.objectives import scale_names
    from var_jax.sample import SamplingSettings, Sampler, box_keep_mask, edit
    from var_jax.two_stage import TOKENIZER_RUN

    out = pathlib.Path(out)
    demo = config.demo
    stages = Stopwatch()
    vae, trainer, two_stage_s = train_models(config, out, stages)
    dtype = str(demo.get("sample_dtype", "float32"))
    var = trainer.var_model(dtype)
    if dtype != "float32":  # both models computing in ``dtype``, as `var-jax sample --dtype` loads them
        vae = load_pretrained(config.tokenizer, dtype=dtype).vae
    tokenizer_run, name = out / TOKENIZER_RUN, config.data.name

    stages.start()
    num_classes = var.cfg.num_classes
    settings = SamplingSettings(cfg=float(demo.cfg), top_k=int(demo.top_k), top_p=float(demo.top_p))
    sampler = Sampler(vae, var, settings)
    per_class = int(demo.samples_per_class)
    labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
    batch = 10 * num_classes
    results = [sampler(labels[i:i + batch], seed=int(config.train.seed) + i) for i in range(0, len(labels), batch)]
    images = np.concatenate([np.asarray(r.images) for r in results])
    np.savez_compressed(out / "samples.npz", images=images, labels=labels)
    class_names = embedded.load(name, "heldout").class_names
    rows = [images[labels == c][:10] for c in range(num_classes)]
    save_png(labelled_grid(rows, [class_names[c][:10] for c in range(num_classes)]), out / "samples_grid.png")
    # The first sample of each class, decoded after every scale: the generation, coarse to fine.
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(num_classes)]
    tokens = [np.concatenate([np.asarray(r.tokens[si]) for r in results])[first]
              for si in range(len(var.cfg.patch_nums))]
    save_png(labelled_grid(decode_every_scale(vae, tokens), scale_names(var.cfg.patch_nums)), out / "pyramid.png")
    stages.stop("sample")

    stages.start()
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
    stages.stop("inpaint")

    stages.start()
    reals = embedded.load(name, "train")
    judge = train_judge(heldout.images, heldout.labels, reals.images, reals.labels, num_classes=num_classes,
                        steps=int(demo.classifier_steps), seed=int(config.train.seed))
    predicted, sample_features = judge(images)
    agreement = float(np.mean(predicted == labels))
    per_class_agreement = [float(np.mean(predicted[labels == c] == c)) for c in range(num_classes)]
    distances = feature_distances(judge, sample_features, _centre32(_pad_to_36(heldout.images)), reals.images,
                                  seed=int(config.train.seed))
    stages.stop("evaluate")

    training_curves(tokenizer_run / "metrics.jsonl", out / "var_run" / "metrics.jsonl", out / "curves.png")
    last_val = last_validation(out / "var_run" / "metrics.jsonl")
    metrics = {
        "dataset": name,
        "class_agreement": agreement,
        "goal": float(demo.goal) if demo.goal > 0 else None,
        "goal_met": agreement >= float(demo.goal) if demo.goal > 0 else None,
        "per_class_agreement": dict(zip(class_names, per_class_agreement)),
        "judge_accuracy_on_real_images": judge.real_accuracy,
        "judge": f"small CNN trained {int(demo.classifier_steps)} steps on the {len(heldout.images)} held-out real "
                 f"images; accuracy measured on the {len(reals.images)} real training images",
        "judge_features": distances,
        "sampling": {"cfg": float(demo.cfg), "top_k": int(demo.top_k), "top_p": float(demo.top_p), "dtype": dtype,
                     "samples": int(len(labels)), "per_class": per_class},
        "var": {"depth": var.cfg.depth, "width": var.cfg.embed_dim, "steps": trainer.step_count(),
                "batch_size": int(config.train.batch_size),
                "parameters": int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(var, nnx.Param)))),
                "heldout": last_val},
        "seed": int(config.train.seed),
        **stages.summary(),
        "tokenizer_and_tokens_s": {k: round(v, 1) for k, v in two_stage_s.items()},  # wall-clock, of which
        "devices": f"{jax.device_count()}× {jax.devices()[0].device_kind}",
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def output_dir(config_name: str, seed: int, out: str | None = None) -> pathlib.Path:
    """``out`` if given, else outputs/demo (outputs/demo_<name> for another config), with _seed<N>
    for a seed other than 0: runs with other seeds never resume each other's stages."""
    if out:
        return pathlib.Path(out)
    stem = pathlib.Path(config_name).stem
    path = DEFAULT_OUT if stem == DEFAULT_CONFIG else DEFAULT_OUT.with_name(f"demo_{stem.removeprefix('demo_')}")
    return path.with_name(f"{path.name}_seed{seed}") if seed else path


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # a real command line (not a call from Python): see xla_cpu.prepare_command
        from var_jax import xla_cpu
        xla_cpu.prepare_command()
    from var_jax.config import load_config, split_overrides
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="python -m var_jax.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="demo config (default: configs/demo_digits.py)")
    parser.add_argument("--out", default=None, help="output directory (default: outputs/demo, or "
                                                    "outputs/demo_<name> for another config; _seed<N> added "
                                                    "for a seed other than 0)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the whole run: both models' initialisation and data order, the crops, the "
                             "samples and the judge (default: the config's train.seed, 0)")
    parser.add_argument("--choose-sampling", action="store_true",
                        help="instead of measuring, print the selector's agreement for every guidance × top-p of "
                             "SWEEP_GRID (see choose_sampling): how the config's sampling settings were chosen")
    args = parser.parse_args(rest)
    try:
        config = load_config(args.config, overrides)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    if "demo" not in config:
        print(f"demo: error: {args.config} has no 'demo' section (see configs/demo_digits.py)", file=sys.stderr)
        return 2
    if args.seed is not None:
        if args.seed < 0:
            parser.error(f"--seed must be a whole number ≥ 0, got {args.seed}")
        config.train.seed = args.seed
    out = output_dir(args.config, int(config.train.seed), args.out)
    if args.choose_sampling:
        rows = choose_sampling(config, out, *SWEEP_GRID, per_class=SWEEP_PER_CLASS)
        best = max(rows, key=lambda r: r["selector_agreement"])
        print(f"highest selector agreement {best['selector_agreement']:.3f} at cfg {best['cfg']:g}, top-p {best['top_p']:g}")
        return 0
    metrics = run(config, out)
    summary = {k: metrics[k] for k in ("class_agreement", "goal", "goal_met", "judge_accuracy_on_real_images")}
    summary["judge_features"] = {k: v for k, v in metrics["judge_features"].items() if isinstance(v, dict)}
    summary.update({k: metrics[k] for k in ("timings_s", "cpu_s")})
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}/: samples.npz, samples_grid.png, pyramid.png, inpainting.png, curves.png, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
