"""Training the multi-scale VQ tokenizer (``var-jax train-tokenizer``).

The loss is VQGAN's around VAR's quantizer (the paper's eq. 5):
    L = l1·|x − x̂| + l2·(x − x̂)² + vq_weight·L_VQ + λ_P·LPIPS(x, x̂) + λ_G·w·D-hinge generator loss,
with L_VQ the quantizer's multi-scale loss (straight-through), w VQGAN's adaptive weight (the ratio
of the gradient norms of the reconstruction and adversarial terms at the decoder's last layer), and
the patch discriminator trained with the hinge loss from ``loss.disc_start`` on.

One compiled step updates the tokenizer, the codebook statistics and (from ``loss.disc_start`` on,
a branch inside the same program) the discriminator.  The tokenizer is differentiated once: the image-space gradients of the
reconstruction and adversarial terms are combined with the adaptive weight and pulled back through
the decoder together (the two gradients the weight needs only reach the last layer).

A run writes to its work directory: ``checkpoints/`` (resumed automatically), ``metrics.jsonl``,
``tensorboard/``, ``eval/recon_<step>.png`` and, at the end, ``tokenizer/`` (a model directory for
``var_jax.load_pretrained``, the VAR trainer and the sampler).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from var_jax import objectives, parallel
from var_jax.config import COMPUTE_DTYPES, model_configs
from var_jax.data import pipeline
from var_jax.data.transforms import to_model_range
from var_jax.image_io import save_png
from var_jax.models.quant import patch_hw
from var_jax.models.state import abstract_model, init_model
from var_jax.models.vqvae import VQVAE, VQVAEConfig
from var_jax.train import codebook, optim
from var_jax.train.checkpointing import Checkpointer, abstract_like, local_workdir
from var_jax.train.loop import Trainer, counters, skip_nonfinite
from var_jax.train.discriminator import DiscriminatorConfig, PatchDiscriminator
from var_jax.train.lpips import load_lpips
from var_jax.train.metrics import MetricsWriter
from var_jax.train.tokenizer_eval import TokenizerEvaluator

log = logging.getLogger(__name__)
ADVERSARIAL_METRICS = ("loss/gen", "loss/disc", "disc/adaptive_weight", "disc/logits_real", "disc/logits_fake",
                       "grad_norm/disc")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    l1: float
    l2: float
    vq_weight: float
    perceptual_weight: float
    disc_weight: float
    disc_adaptive: bool
    tokens_per_step: int   # B·h·w of the latent grid: the official usage threshold's scale


def check_config(config: ml_collections.ConfigDict) -> tuple[VQVAEConfig, DiscriminatorConfig]:
    """The tokenizer and discriminator configurations, after checking everything a run depends on."""
    for section in ("img_size", "vae", "data", "train", "loss", "codebook", "eval"):
        if section not in config:
            raise ValueError(f"the config has no '{section}' section; start from "
                             f"var_jax.config.tokenizer_training() (see configs/vqvae_digits.py)")
    vae_cfg, _ = model_configs(config)
    img, down, last = int(config.img_size), vae_cfg.downsample, patch_hw(vae_cfg.v_patch_nums[-1])
    if img % down or (img // down, img // down) != last:
        raise ValueError(f"the last patch size {last[0]}×{last[1]} must equal the latent size: img_size {img} / "
                         f"downsample {down} (= 2^(len(ch_mult)−1)) = {img / down:g}; change vae.v_patch_nums[-1] to "
                         f"{img // down} or img_size to {last[0] * down}")
    t, lo, ev = config.train, config.loss, config.eval
    if t.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"train.compute_dtype must be one of {COMPUTE_DTYPES}, got {t.compute_dtype!r}")
    ways = parallel.batch_shards(parallel.make_mesh(config))
    for name, value in (("train.batch_size", t.batch_size), ("eval.batch_size", ev.batch_size)):
        if value < 1 or value % ways:
            raise ValueError(f"{name}={value} must be a positive multiple of the data-parallel size ({ways})")
    if t.steps < 1:
        raise ValueError(f"train.steps must be at least 1, got {t.steps}")
    for name in ("log_every", "ckpt_every", "max_bad_steps"):
        if t[name] < 1:
            raise ValueError(f"train.{name} must be at least 1, got {t[name]}")
    if ev.every < 1 or not 0 < ev.num_show <= ev.batch_size:
        raise ValueError(f"eval.every must be >= 1 and eval.num_show in [1, eval.batch_size={ev.batch_size}], "
                         f"got every={ev.every}, num_show={ev.num_show}")
    if not 0 <= ev.lpips_images <= ev.num_images or ev.lpips_images % ev.batch_size:
        raise ValueError(f"eval.lpips_images must be a multiple of eval.batch_size={ev.batch_size} between 0 and "
                         f"eval.num_images={ev.num_images}, got {ev.lpips_images}")
    for name in ("l1", "l2", "vq_weight", "perceptual_weight", "disc_weight"):
        if lo[name] < 0:
            raise ValueError(f"loss.{name} must be >= 0, got {lo[name]}")
    if lo.l1 == 0 and lo.l2 == 0 and lo.perceptual_weight == 0:
        raise ValueError("no reconstruction loss: set loss.l1, loss.l2 or loss.perceptual_weight above 0")
    disc_cfg = DiscriminatorConfig(ch=lo.disc_ch, num_layers=lo.disc_layers, dtype=t.compute_dtype)
    if lo.disc_weight > 0:
        disc_cfg.check_image_size(img)
    return vae_cfg, disc_cfg


def _split(model) -> tuple[Any, nnx.State, nnx.State]:
    """(graph, parameters, everything else: statistics)."""
    return nnx.split(model, nnx.Param, ...)


class TokenizerTrainer(Trainer):
    """Builds (or resumes) a run in ``workdir``; :meth:`train` runs it to ``train.steps`` (the loop of
    :class:`var_jax.train.loop.Trainer`) with the held-out evaluation as a hook."""

    desc, export_dir, resume_keys = "tokenizer", "tokenizer", ("img_size", "vae", "data")

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
        self.config = config
        self.vae_cfg, self.disc_cfg = check_config(config)
        self.workdir = local_workdir(workdir)
        t, lo = config.train, config.loss
        self.total_steps = int(t.steps)
        self.mesh = parallel.make_mesh(config)  # the batch split over data × fsdp, the models replicated
        self._replicated = parallel.replicated(self.mesh)
        self._batch_sharding = parallel.batch_sharding(self.mesh, parallel.logical_rules(config), 4)

        # the data first: a missing folder or a bad evaluation size fails before anything is built
        train_src, heldout_src = pipeline.sources(config.data)
        self._train_data = pipeline.train_batches(
            train_src, image_size=int(config.img_size), batch_size=int(t.batch_size), seed=int(t.seed),
            hflip=bool(config.data.hflip), num_threads=int(config.data.num_threads))
        self._batches = iter(self._train_data)
        ev = config.eval
        self._heldout_data = pipeline.eval_batches(
            heldout_src, image_size=int(config.img_size), batch_size=int(ev.batch_size),
            num_images=int(ev.num_images), num_threads=int(config.data.num_threads))
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=int(t.keep_checkpoints))
        self.check_resumable()
        self.add_hook(self.evaluate, every=int(config.eval.every), name="eval")

        compute = dataclasses.replace(self.vae_cfg, dtype=t.compute_dtype)
        vae = init_model(VQVAE, compute, seed=int(t.seed))
        disc = init_model(PatchDiscriminator, self.disc_cfg, seed=int(t.seed) + 1)
        self._vae_graph, vae_params, vae_stats = _split(vae)
        self._disc_graph, disc_params = nnx.split(disc)  # parameters only (see discriminator.py)
        self.lpips = self._load_lpips(need=lo.perceptual_weight > 0 or config.eval.lpips_images > 0)
        self._lpips_graph, self._lpips_state = nnx.split(self.lpips) if self.lpips is not None else (None, None)

        self.lr = optim.lr_schedule(t.lr, self.total_steps, t.warmup_steps, t.lr_schedule, end_ratio=t.end_lr_ratio)
        disc_lr = optim.lr_schedule(lo.disc_lr, self.total_steps, t.warmup_steps, t.lr_schedule,
                                    end_ratio=t.end_lr_ratio)
        wd = optim.wd_schedule(t.weight_decay, None, self.total_steps)
        self._vae_tx = optim.adamw(vae_params, lr=self.lr, weight_decay=wd, b1=t.b1, b2=t.b2, grad_clip=t.grad_clip)
        self._disc_tx = optim.adamw(disc_params, lr=disc_lr, weight_decay=wd, b1=t.b1, b2=t.b2,
                                    grad_clip=t.grad_clip)
        state = {**counters(), "vae": vae_params, "vae_stats": vae_stats, "vae_opt": self._vae_tx.init(vae_params),
                 "disc": disc_params, "disc_opt": self._disc_tx.init(disc_params)}
        self.state = jax.device_put(state, self._replicated)

        latent = patch_hw(self.vae_cfg.v_patch_nums[-1])
        self.settings = LossSettings(
            l1=lo.l1, l2=lo.l2, vq_weight=lo.vq_weight,
            perceptual_weight=lo.perceptual_weight if self.lpips is not None else 0.0,
            disc_weight=lo.disc_weight, disc_adaptive=lo.disc_adaptive,
            tokens_per_step=int(t.batch_size) * latent[0] * latent[1])
        self.disc_start = int(lo.disc_start)
        self._step = jax.jit(self._make_step(), donate_argnums=0)
        self._reseed = jax.jit(self._reseed_codes, donate_argnums=0)
        self.evaluator = TokenizerEvaluator()
        self._reseed_key = jax.random.key(int(t.seed) + 2)

        self.last_good_step: int | None = None
        if self.checkpointer.latest_step() is not None:
            self.resume(abstract_like(self.state))

    # -- set-up -----------------------------------------------------------------------------------------------
    def _load_lpips(self, need: bool):
        if not need:
            return None
        try:
            return load_lpips(self.config.loss.lpips_weights or None, dtype=self.config.train.compute_dtype)
        except FileNotFoundError as e:
            if self.config.loss.perceptual_weight > 0:
                raise
            log.warning("held-out LPIPS is off: %s", e)
            return None

    # -- compiled pieces --------------------------------------------------------------------------------------
    def _make_step(self):
        """The compiled training step.  With a discriminator, one program serves the whole run: the
        adversarial branch (generator gradient, adaptive weight, discriminator update) is taken from
        ``loss.disc_start`` on, and the other branch leaves the discriminator alone."""
        s, vae_graph, disc_graph = self.settings, self._vae_graph, self._disc_graph
        names = objectives.scale_names(self.vae_cfg.v_patch_nums)
        lpips_graph, vae_tx, disc_tx, lr = self._lpips_graph, self._vae_tx, self._disc_tx, self.lr
        with_disc, disc_start = s.disc_weight > 0, self.disc_start

        def step(state, lpips_state, x):
            def forward(params):
                recon, vq_loss, hits = nnx.merge(vae_graph, params, state["vae_stats"])(x)
                return (recon, vq_loss), hits
            (recon, vq_loss), pull_vae, hits = jax.vjp(forward, state["vae"], has_aux=True)
            zero = jnp.zeros_like(vq_loss)

            def reconstruction(r):
                rec = objectives.pixel_loss(r, x, s.l1, s.l2)
                perc = jnp.mean(nnx.merge(lpips_graph, lpips_state)(r, x)) if s.perceptual_weight > 0 else 0.0
                return rec + s.perceptual_weight * perc, (rec, perc)
            nll, pull_nll, (rec, perc) = jax.vjp(reconstruction, recon, has_aux=True)
            grad_img = pull_nll(jnp.ones_like(nll))[0]
            metrics = {"loss/rec": rec, "loss/vq": vq_loss}
            if s.perceptual_weight > 0:
                metrics["loss/lpips"] = perc

            def adversarial(grad_img):
                g_loss, pull_g = jax.vjp(lambda r: objectives.generator_loss(nnx.merge(disc_graph, state["disc"])(r)),
                                         recon)
                grad_g = pull_g(jnp.ones_like(g_loss))[0]
                weight = jnp.asarray(s.disc_weight, jnp.float32)
                if s.disc_adaptive:  # VQGAN's ratio at the decoder's last layer (XLA keeps only that part)
                    last = lambda g: g["decoder"]["conv_out"]["kernel"][...]  # noqa: E731
                    weight = weight * objectives.adaptive_weight(last(pull_vae((grad_img, zero))[0]),
                                                             last(pull_vae((grad_g, zero))[0]))
                fake = jax.lax.stop_gradient(recon)

                def d_loss(params):
                    disc = nnx.merge(disc_graph, params)
                    real_logits, fake_logits = disc(x), disc(fake)  # two calls: two batch statistics, as VQGAN
                    return objectives.hinge_d_loss(real_logits, fake_logits), (jnp.mean(real_logits),
                                                                           jnp.mean(fake_logits))
                (d, (real_mean, fake_mean)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state["disc"])
                d_updates, disc_opt = disc_tx.update(d_grads, state["disc_opt"], state["disc"])
                return grad_img + weight * grad_g, optax.apply_updates(state["disc"], d_updates), disc_opt, {
                    "loss/gen": g_loss, "disc/adaptive_weight": weight, "loss/disc": d,
                    "disc/logits_real": real_mean, "disc/logits_fake": fake_mean,
                    "grad_norm/disc": optax.tree.norm(d_grads)}

            def idle(grad_img):
                return grad_img, state["disc"], state["disc_opt"], {
                    k: jnp.zeros((), jnp.float32) for k in ADVERSARIAL_METRICS}

            if with_disc:
                grad_img, disc, disc_opt, adv = jax.lax.cond(state["step"] >= disc_start, adversarial, idle,
                                                             grad_img)
                metrics.update(adv)
            grads = pull_vae((grad_img, jnp.asarray(s.vq_weight, vq_loss.dtype)))[0]
            updates, vae_opt = vae_tx.update(grads, state["vae_opt"], state["vae"])
            # a copy of the statistics: the update below writes into the merged module's variables, and
            # skip_nonfinite needs the old ones
            stats = jax.tree.map(jnp.copy, state["vae_stats"])
            vae = nnx.merge(vae_graph, optax.apply_updates(state["vae"], updates), stats)
            ema, count = codebook.update_hit_ema(vae.quantize.ema_vocab_hit_SV[...], vae.quantize.record_hit[...], hits)
            vae.quantize.ema_vocab_hit_SV[...], vae.quantize.record_hit[...] = ema, count
            _, vae_params, vae_stats = _split(vae)
            new = dict(state, vae=vae_params, vae_stats=vae_stats, vae_opt=vae_opt)
            if with_disc:
                new.update(disc=disc, disc_opt=disc_opt)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(grad_norm) & jnp.isfinite(nll) & jnp.isfinite(vq_loss)
            if with_disc:
                finite &= jnp.isfinite(metrics["grad_norm/disc"]) & jnp.isfinite(metrics["loss/disc"])
            new = skip_nonfinite(state, new, finite)  # a non-finite step changes nothing but the counters
            applied = state["step"] - state["skipped"]  # the optimizer's own count
            metrics.update({"grad_norm/vae": grad_norm, "lr": lr(applied),
                            "psnr_train": jnp.mean(objectives.psnr(jnp.clip(recon, -1, 1), x)),
                            "nonfinite": (~finite).astype(jnp.float32), "bad_run": new["bad_run"]})
            usage = codebook.usage_percent(ema, s.tokens_per_step)
            metrics.update({f"usage_ema/{name}": usage[k] for k, name in enumerate(names)})
            return new, metrics
        return step

    def _reseed_codes(self, state, x, key):
        """Re-seed the codes no scale uses with residuals that the last scale quantizes in this batch."""
        vae = nnx.merge(self._vae_graph, state["vae"], state["vae_stats"])
        f = vae.encode_latent(x)
        residual = f - vae.quantize.encode(f, to_fhat=True)[-2]
        dead = codebook.dead_codes(vae.quantize.ema_vocab_hit_SV[...], self.settings.tokens_per_step)
        book, count = codebook.reseed(vae.quantize.embedding.embedding[...], dead,
                                      residual.reshape(-1, residual.shape[-1]), key)
        vae.quantize.embedding.embedding[...] = book
        return dict(state, vae=_split(vae)[1]), count

    # -- the step, for the loop -----------------------------------------------------------------------------
    @property
    def batches(self):
        return self._batches

    @batches.setter
    def batches(self, value):
        self._batches = value

    def _device_batch(self, images_uint8: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self._batch_sharding, to_model_range(images_uint8))

    def train_step(self, step: int, batch: dict) -> dict[str, Any]:
        x = self._device_batch(batch["image"])
        cb = self.config.codebook
        reseeded = {}
        # step 0 (every code unused) seeds the whole codebook from the data
        if cb.reseed_every and step < cb.reseed_until and step % cb.reseed_every == 0:
            self.state, count = self._reseed(self.state, x, jax.random.fold_in(self._reseed_key, step))
            reseeded = {"codebook/reseeded": count}
        self.state, metrics = self._step(self.state, self._lpips_state, x)
        if step < self.disc_start:  # the adversarial branch did not run: nothing to log
            metrics = {k: v for k, v in metrics.items() if k not in ADVERSARIAL_METRICS}
        return {**metrics, **reseeded}

    def progress(self, m: dict[str, float]) -> dict[str, str]:
        return dict(rec=f"{m['loss/rec']:.4f}", vq=f"{m['loss/vq']:.4f}", psnr=f"{m['psnr_train']:.1f}")

    # -- evaluation, checkpoints, export ----------------------------------------------------------------------
    def vae(self) -> VQVAE:
        """The tokenizer with the current weights (float32 configuration, ready to save)."""
        model = abstract_model(VQVAE, self.vae_cfg)
        nnx.update(model, jax.device_get(self.state["vae"]), jax.device_get(self.state["vae_stats"]))
        return model

    def _compute_vae(self) -> VQVAE:
        return nnx.merge(self._vae_graph, self.state["vae"], self.state["vae_stats"])

    def heldout_batches(self):
        """The held-out images, (B, H, W, 3) in [-1, 1], the same ones on every pass."""
        for batch in self._heldout_data:
            yield self._device_batch(batch["image"])

    def evaluate(self, step: int | None = None, writer: MetricsWriter | None = None) -> dict[str, float]:
        """Held-out metrics (see :class:`TokenizerEvaluator`) and the reconstruction picture
        ``eval/recon_<step>.png``; logged when a writer is given."""
        step = self.step_count() if step is None else step
        vae = self._compute_vae()
        metrics = self.evaluator.evaluate(vae, self.heldout_batches(), self.lpips,
                                          lpips_images=int(self.config.eval.lpips_images))
        show = next(self.heldout_batches())[: self.config.eval.num_show]
        picture = self.evaluator.pyramid(vae, show)
        if jax.process_index() == 0:
            save_png(picture, self.recon_png(step))
        ema = codebook.usage_percent(self.state["vae_stats"]["quantize"]["ema_vocab_hit_SV"][...],
                                     self.settings.tokens_per_step)
        names = objectives.scale_names(self.vae_cfg.v_patch_nums)
        metrics.update({f"usage_ema/{n}": float(u) for n, u in zip(names, np.asarray(ema))})
        if writer is not None:
            writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
            writer.image(step, "eval/reconstructions", picture)
        return metrics

    def recon_png(self, step: int) -> pathlib.Path:
        """Where :meth:`evaluate` puts the originals and their reconstructions of ``step``."""
        return self.workdir / "eval" / f"recon_{step:07d}.png"

    def export_models(self) -> dict[str, Any]:
        return {"vae": self.vae(), "extra": {"trained_steps": self.step_count()}}


def train_tokenizer(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train (or resume) a tokenizer in ``workdir``; returns what :meth:`TokenizerTrainer.train` returns."""
    return TokenizerTrainer(config, workdir).train()
