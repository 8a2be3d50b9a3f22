"""The compiled sampler, top-k/top-p, zero-shot editing, the sample/edit command and evaluation sets."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from var_jax import checkpoint
from var_jax.cli import main as cli
from var_jax.convert import vae_from_official, var_from_official
from var_jax.models.state import abstract_model, init_model
from var_jax.models.var import VAR, attention
from var_jax.models.vqvae import VQVAE
from var_jax.ops.resample import bilinear_matrix
from var_jax.ops.sampling import cumulative_sum, filter_top_k_top_p, gumbel_noise, sample_categorical
from var_jax.sample import (Sampler, SamplingSettings, _as_loaded, _as_stored, _attention_by_row, _image_program,
                            _tokens_program, box_keep_mask, decode, edit, generate, scale_keep_masks)
from var_jax.sample_npz import write_evaluation_npz

# float32 models against float32 models computed along another path: 1e-4 is the parity tolerance,
# about 100x the differences seen (summation order of attention over the cache vs under the mask).
TOL = 1e-4


@pytest.fixture(scope="module")
def official_models(official, official_configs):
    vae_cfg, var_cfg = official_configs
    sd = lambda p: {k[len(p):]: official[k] for k in official.files if k.startswith(p)}
    return vae_from_official(sd("vae/"), vae_cfg), var_from_official(sd("var/"), var_cfg)


@pytest.fixture(scope="module")
def tiny_models(tiny_vae, tiny_var):
    """A random tokenizer (8x8 images, scales 1,2,4) and a matching VAR with shared AdaLN."""
    vae = init_model(VQVAE, tiny_vae(), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 4), shared_aln=True, attn_l2_norm=False, init_adaln_gamma=0.5,
                                   init_head=1.0), seed=1)
    return vae, var


@nnx.jit
def _cached_and_teacher_forced(vae, var, tokens, labels):
    keep_all = [(t.astype(jnp.int32), jnp.ones(t.shape, bool)) for t in tokens]
    _, out_tokens, logits = generate(vae, var, labels, jax.random.key(0), SamplingSettings(cfg=0.0), keep_all,
                                     with_logits=True)
    return out_tokens, logits, var(labels, vae.quantize.idx_to_var_input(tokens))


def _cached_vs_teacher_forced(vae, var, tokens, labels):
    with jax.default_matmul_precision("highest"):
        out_tokens, logits, reference = _cached_and_teacher_forced(vae, var, tokens, labels)
    for (begin, end), got in zip(var.cfg.begin_ends(), logits):
        np.testing.assert_allclose(np.asarray(got), np.asarray(reference[:, begin:end]), atol=TOL, rtol=0)
    for a, b in zip(out_tokens, tokens):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cached_logits_equal_teacher_forced_on_the_fixture(official, official_models):
    vae, var = official_models
    tokens = [jnp.asarray(official[f"idx/{k}"]) for k in range(len(var.cfg.patch_nums))]
    _cached_vs_teacher_forced(vae, var, tokens, jnp.asarray(official["label"]))


def test_cached_logits_equal_teacher_forced_shared_aln_without_l2_norm(tiny_models):
    vae, var = tiny_models
    rng = np.random.default_rng(0)
    tokens = [jnp.asarray(rng.integers(0, 16, (3, pn * pn))) for pn in var.cfg.patch_nums]
    _cached_vs_teacher_forced(vae, var, tokens, jnp.asarray([0, 3, var.cfg.num_classes]))


def test_greedy_sampling_equals_the_official_tokens_and_image(official, official_config, official_models):
    vae, var = official_models
    settings = SamplingSettings(cfg=official_config["sample"]["cfg"], top_k=1)
    with jax.default_matmul_precision("highest"):
        result = Sampler(vae, var, settings, uint8=False)(official["sample/labels"])
    for k, t in enumerate(result.tokens):
        np.testing.assert_array_equal(np.asarray(t), official[f"sample/idx/{k}"])
    np.testing.assert_allclose(np.asarray(result.images).transpose(0, 3, 1, 2), official["sample/img"], atol=TOL)


def test_same_seed_same_images_other_seed_other_images(tiny_models):
    sampler = Sampler(*tiny_models, SamplingSettings(cfg=2.0, top_k=8, top_p=0.9))
    a, b, c = sampler([0, 1], seed=3), sampler([0, 1], seed=3), sampler([0, 1], seed=4)
    assert a.images.dtype == jnp.uint8 and a.images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.tokens, c.tokens))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_sampler_holds_the_block_kernels_per_layer_with_the_same_result(tiny_vae, tiny_var, dtype):
    vae = init_model(VQVAE, tiny_vae(dtype=dtype), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 4), dtype=dtype), seed=1)
    sampler = Sampler(vae, var, SamplingSettings(cfg=2.0, top_k=5, top_p=0.9), uint8=False)
    # On a CPU the blocks' five kernels (qkv, proj, fc1, fc2, AdaLN) are one array per layer, in the compute dtype.
    blocks = sampler.states[1]["blocks"]
    for kernel in (blocks["attn"]["mat_qkv"], blocks["attn"]["proj"]["kernel"], blocks["ffn"]["fc1"]["kernel"],
                   blocks["ffn"]["fc2"]["kernel"], blocks["ada_lin"]["kernel"]):
        layers = kernel.get_value()
        assert isinstance(layers, tuple) and len(layers) == var.cfg.depth
        assert all(k.dtype == jnp.dtype(dtype) for k in layers)
    assert blocks["ffn"]["fc1"]["kernel"].get_value()[0].shape == (var.cfg.embed_dim, var.cfg.mlp_hidden)
    assert sampler.states[1]["head"]["kernel"][...].dtype == jnp.dtype(dtype)
    labels = jnp.asarray([0, 1, 2, 3], jnp.int32)
    ours = sampler(labels, seed=0)
    # The stacked float32 weights, sliced by the scan and converted at each use: the same operands reach
    # every product.
    f_hat, tokens = _tokens_program(sampler.graphdefs, (sampler.states[0], nnx.split(var)[1]), labels,
                                    jax.random.key(0), None, sampler.settings)
    images = _image_program(sampler.graphdefs[0], sampler.states[0], f_hat, False)
    for a, b in zip(ours.tokens, tokens):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(ours.images), np.asarray(images), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_over_the_cache_row_by_row_equals_the_whole_batch(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=s), dtype) for s in ((3, 5, 2, 8), (3, 2, 11, 8), (3, 2, 11, 8)))
    by_row = jax.jit(_attention_by_row, static_argnums=3)(q, k, v, 0.35)  # on a CPU: a loop over the rows
    whole = jax.jit(attention, static_argnums=3)(q, k, v, 0.35)
    assert by_row.shape == whole.shape == (3, 5, 2, 8) and by_row.dtype == whole.dtype
    # Another program layout, so float tolerance: float32 sums of 8 and 11 terms of order one (a few
    # ulps of 1e-7); measured equal on a 2-core AMD EPYC.
    np.testing.assert_allclose(np.asarray(by_row, np.float32), np.asarray(whole, np.float32), atol=1e-6, rtol=0)


def test_only_a_cpu_attends_row_by_row():
    q, kv = jax.ShapeDtypeStruct((3, 5, 2, 8), jnp.float32), jax.ShapeDtypeStruct((3, 2, 11, 8), jnp.float32)
    fn = jax.jit(_attention_by_row, static_argnums=3)
    assert "stablehlo.while" in fn.lower(q, kv, kv, 0.35).as_text()
    assert "stablehlo.while" not in fn.trace(q, kv, kv, 0.35).lower(lowering_platforms=("tpu",)).as_text()


def test_a_bfloat16_kv_cache_holds_its_bits_and_is_never_converted_whole(tiny_vae, tiny_var):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    stored = _as_stored(x, jnp.bfloat16)
    assert stored.dtype == jnp.uint16 and _as_stored(x, jnp.float32).dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(_as_loaded(stored, jnp.bfloat16)), np.asarray(x.astype(jnp.bfloat16)))
    vae = init_model(VQVAE, tiny_vae(dtype="bfloat16"), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 4), dtype="bfloat16"), seed=1)
    sampler = Sampler(vae, var, SamplingSettings(cfg=2.0))
    hlo = _tokens_program.lower(sampler.graphdefs, sampler.states, jnp.asarray([0, 1], jnp.int32), jax.random.key(0),
                                None, sampler.settings).compile().as_text()
    cfg = var.cfg
    cache = f"[{cfg.depth},4,{cfg.num_heads},{cfg.begin_ends()[-1][0]},{cfg.head_dim}]"
    assert f"u16{cache}" in hlo
    assert f"f32{cache}" not in hlo and f"bf16{cache}" not in hlo


def test_decoding_one_image_at_a_time_equals_the_batch(tiny_vae, helpers):
    vae = init_model(VQVAE, tiny_vae(), seed=0)
    helpers.randomize(vae, seed=3)  # the decoder's norms and biases too
    f_hat = jax.random.normal(jax.random.key(0), (3, 4, 4, vae.cfg.z_channels))
    one_by_one = nnx.jit(decode)(vae, f_hat)  # on a CPU: a loop over the images
    # another program layout, so float tolerance (measured: 1.4e-6 here, 7e-6 for the released decoder)
    np.testing.assert_allclose(np.asarray(one_by_one), np.asarray(nnx.jit(VQVAE.fhat_to_img)(vae, f_hat)), atol=1e-5)


def test_programs_compiled_ahead_are_the_ones_a_call_runs(tiny_models, monkeypatch):
    from var_jax import sample as sample_module
    settings = SamplingSettings(cfg=2.0, top_k=8)
    reference = Sampler(*tiny_models, settings)([0, 1, 2], seed=4)
    sampler = Sampler(*tiny_models, settings)
    programs = sampler.compile(3)
    monkeypatch.setattr(sample_module, "_tokens_program", None)  # a call that compiled again would fail here
    monkeypatch.setattr(sample_module, "_image_program", None)
    ours = sampler([0, 1, 2], seed=4)
    assert sampler.compile(3) is programs
    np.testing.assert_array_equal(np.asarray(ours.images), np.asarray(reference.images))
    for a, b in zip(ours.tokens, reference.tokens):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_random_and_unconditional_labels(tiny_models):
    sampler = Sampler(*tiny_models)
    drawn = sampler(None, batch=6, seed=0).labels
    assert drawn.shape == (6,) and int(drawn.min()) >= 0 and int(drawn.max()) < 5
    assert list(np.asarray(sampler([-1, 5, 2]).labels)) == [5, 5, 2]
    with pytest.raises(ValueError, match="class id 6 is out of range: use 0..4"):
        sampler([6])
    with pytest.raises(ValueError, match="batch="):
        sampler(None)


def test_more_smooth_runs_and_changes_the_result(tiny_models):
    plain = Sampler(*tiny_models, SamplingSettings(cfg=1.0))([1, 2], seed=0)
    smooth = Sampler(*tiny_models, SamplingSettings(cfg=1.0, more_smooth=True))([1, 2], seed=0)
    assert smooth.images.shape == plain.images.shape
    assert not np.array_equal(np.asarray(smooth.images), np.asarray(plain.images))


@pytest.mark.parametrize("kwargs, message", [
    (dict(cfg=-1.0), "cfg must be ≥ 0"),
    (dict(top_k=-3), "top_k must be a whole number ≥ 0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_p=-0.1), r"top_p must be in \(0, 1\]"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def _official_filter(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """The official sample_with_top_k_top_p_ masking, row by row in float64 NumPy."""
    out = logits.astype(np.float64).copy()
    for row in out.reshape(-1, out.shape[-1]):
        if top_k > 0:
            row[row < np.sort(row)[-top_k]] = -np.inf
        if top_p > 0:
            order = np.argsort(row, kind="stable")
            p = np.exp(row[order] - row.max())
            remove = np.cumsum(p / p.sum()) <= 1 - top_p
            remove[-1] = False
            row[order[remove]] = -np.inf
    return out


@pytest.mark.parametrize("top_k, top_p", [(0, 0.0), (5, 0.0), (0, 0.7), (7, 0.9), (1, 0.0), (0, 1.0)])
def test_top_k_top_p_match_the_official_rule(top_k, top_p):
    logits = np.random.default_rng(top_k).normal(size=(3, 4, 40)).astype(np.float32) * 3
    ours = np.asarray(filter_top_k_top_p(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(_official_filter(logits, top_k, top_p)))
    np.testing.assert_array_equal(ours[~np.isinf(ours)], logits[~np.isinf(ours)])


@pytest.mark.parametrize("top_k, top_p", [(3, 0.5), (3, 0.9), (6, 0.3), (6, 0.99), (2, 1.0)])
def test_top_k_top_p_with_ties_at_the_kth_match_the_official_rule(top_k, top_p):
    # Logits on a coarse grid: many rows have ties with the k-th largest beyond the k selected, and
    # the top-p cut falls before, among and after them depending on p.  Ties at the top-p cut are all
    # kept: every logit ≥ the smallest one the official rule keeps survives.
    logits = np.round(np.random.default_rng(1).normal(size=(64, 12)) * 2).astype(np.float32) / 2
    official = _official_filter(logits, top_k, top_p)
    lowest_kept = np.where(np.isinf(official), np.inf, official).min(axis=-1, keepdims=True)
    ours = np.asarray(filter_top_k_top_p(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(~np.isinf(ours), logits >= lowest_kept)
    assert (np.sum(logits >= np.sort(logits)[:, -top_k:-top_k + 1], axis=-1) > top_k).any()  # ties beyond k exist


@pytest.mark.parametrize("n", [1, 2, 17, 900, 4096])
def test_cumulative_sum_is_a_cumsum_within_float32_rounding(n):
    # Relative to the total: measured ≤ 1.9e-7 for the blocked sums, 1.4e-7 for jnp.cumsum (n = 4096).
    x = np.random.default_rng(n).random((3, 2, n)).astype(np.float32)
    exact = np.cumsum(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(np.asarray(cumulative_sum(jnp.asarray(x))), exact, rtol=0, atol=1e-6 * exact.max())


def test_sample_categorical_is_jax_categorical_with_the_noise_given():
    key, logits = jax.random.key(3), jax.random.normal(jax.random.key(1), (5, 7, 300)) * 3
    logits = logits.at[..., :290].set(-jnp.inf)  # filtered out: never drawn
    drawn = sample_categorical(logits, gumbel_noise(key, logits.shape))
    np.testing.assert_array_equal(drawn, jax.random.categorical(key, logits))
    assert int(drawn.min()) >= 290


def test_top_k_keeps_ties():
    logits = jnp.asarray([[1.0, 3.0, 3.0, 2.0, 3.0]])
    kept = ~np.isinf(np.asarray(filter_top_k_top_p(logits, top_k=1)))
    assert kept.tolist() == [[False, True, True, False, True]]


def test_bilinear_matrix_is_pytorch_align_corners_false():
    # F.interpolate(mode='bilinear', align_corners=False) from 2 to 4: the first source coordinate
    # -0.25 is clamped to 0, the last (1.25) reads only the last input.
    np.testing.assert_allclose(bilinear_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(bilinear_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_box_masks_follow_the_official_rounding():
    inpaint = box_keep_mask((8, 8, 24, 24), 32, 8, "inpaint")
    assert inpaint.sum() == 64 - 16 and not inpaint[2:6, 2:6].any()
    np.testing.assert_array_equal(box_keep_mask((8, 8, 24, 24), 32, 8, "outpaint"), 1 - inpaint)
    with pytest.raises(ValueError, match="must satisfy 0 ≤ x0 < x1 ≤ 32"):
        box_keep_mask((8, 8, 40, 24), 32, 8, "inpaint")
    with pytest.raises(ValueError, match="mode must be one of"):
        box_keep_mask((8, 8, 24, 24), 32, 8, "paint")


def test_scale_masks_force_the_tiny_scales():
    masks = scale_keep_masks(np.zeros((4, 4)), (1, 2, 4), batch=2)
    assert masks[0].all() and not masks[1].any() and not masks[2].any()
    assert [m.shape for m in masks] == [(2, 1), (2, 4), (2, 16)]


def test_edit_keeps_the_image_tokens_where_asked(tiny_models):
    vae, var = tiny_models
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32))
    keep = box_keep_mask((2, 2, 6, 6), 8, 4, "inpaint")
    result = edit(vae, var, images, keep, [1, 2], settings=SamplingSettings(cfg=1.0, top_k=4))
    source = vae.img_to_idx(images)
    for got, src, mask in zip(result.tokens, source, scale_keep_masks(keep, var.cfg.patch_nums, 2)):
        mask = np.asarray(mask)
        np.testing.assert_array_equal(np.asarray(got)[mask], np.asarray(src)[mask])


@pytest.fixture(scope="module")
def digits_model_dir(tmp_path_factory, tiny_vae, tiny_var):
    """A random tokenizer and VAR for 32x32 images with scales 1,2,3,4,6,8, saved as a model directory."""
    vae = init_model(VQVAE, tiny_vae(ch_mult=(1, 2, 2), v_patch_nums=(1, 2, 3, 4, 6, 8)), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 3, 4, 6, 8), num_classes=10), seed=1)
    return checkpoint.save_pretrained(tmp_path_factory.mktemp("models") / "digits", vae=vae, var=var)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    """A real handwritten digit from the embedded set, as a 28x28 PNG."""
    from PIL import Image

    from var_jax.data import embedded
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(embedded.load("digits", "heldout").images[0]).save(path)
    return path


@pytest.mark.parametrize("mode, extra", [("inpaint", []), ("outpaint", []), ("edit", ["--class", "3"])])
def test_edit_command_keeps_the_region_at_token_level(digits_model_dir, digit_png, tmp_path, capsys, mode, extra):
    out, tokens = tmp_path / f"{mode}.png", tmp_path / f"{mode}.npz"
    code = cli(["edit", "--ckpt", str(digits_model_dir), "--image", str(digit_png), "--box", "8,8,24,24",
                "--mode", mode, "--out", str(out), "--tokens", str(tokens), "--top-k", "8", *extra])
    assert code == 0 and out.is_file()
    assert "resized" in capsys.readouterr().out  # 28x28 → 32x32, and it says so
    saved = np.load(tokens)
    masks = scale_keep_masks(saved["keep"], (1, 2, 3, 4, 6, 8), 1)
    regenerated = 0
    for k, mask in enumerate(masks):
        mask = np.asarray(mask)
        np.testing.assert_array_equal(saved[f"tokens_{k}"][mask], saved[f"source_{k}"][mask])
        regenerated += int((~mask).sum())
    assert regenerated > 0


def test_edit_command_refuses_bad_input(digits_model_dir, digit_png, tmp_path, capsys):
    base = ["edit", "--ckpt", str(digits_model_dir), "--image", str(digit_png), "--out", str(tmp_path / "o.png")]
    assert cli(base + ["--box", "8,8,40,24"]) == 2
    assert "must satisfy" in capsys.readouterr().err
    assert cli(base + ["--box", "8,8"]) == 2
    assert "--box takes x0,y0,x1,y1" in capsys.readouterr().err
    assert cli(base + ["--box", "8,8,24,24", "--mode", "edit"]) == 2
    assert "give --class K" in capsys.readouterr().err
    assert cli(base + ["--box", "8,8,24,24", "--mode", "edit", "--class", "11"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_sample_command_writes_grid_and_tokens(digits_model_dir, tmp_path):
    grid, tokens = tmp_path / "grid.png", tmp_path / "tokens.npz"
    code = cli(["sample", "--ckpt", str(digits_model_dir), "--classes", "1,2,3", "--per-class", "2", "--cfg", "4",
                "--top-k", "8", "--top-p", "0.95", "--out", str(grid), "--tokens", str(tokens),
                "--png-dir", str(tmp_path / "pngs")])
    assert code == 0
    from PIL import Image
    assert Image.open(grid).size[1] >= 3 * 32  # one row per class
    saved = np.load(tokens)
    assert saved["labels"].tolist() == [1, 1, 2, 2, 3, 3] and saved["tokens_5"].shape == (6, 64)
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 6


@pytest.mark.parametrize("args, message", [
    (["--classes", "1,x"], "comma-separated class ids"),
    (["--classes", "11"], "out of range"),
    (["--cfg", "-2"], "cfg must be ≥ 0"),
    (["--classes", " "], "comma-separated class ids"),
    (["--classes", "10"], "class 10 is out of range for this model: use 0..9, or -1"),  # not unconditional
    (["--per-class", "0"], "--per-class must be at least 1, got 0"),
    (["--per-class", "-2"], "--per-class must be at least 1, got -2"),
    (["--batch", "-4"], "--batch must be at least 1, got -4"),
    (["--top-p", "0"], None),
])
def test_sample_command_errors(digits_model_dir, tmp_path, capsys, args, message):
    code = cli(["sample", "--ckpt", str(digits_model_dir), "--out", str(tmp_path / "g.png"), *args])
    if message is None:  # top_p 0 switches top-p off: valid
        assert code == 0
    else:
        assert code == 2 and message in capsys.readouterr().err


def test_sample_refuses_a_tokenizer_that_does_not_fit(tiny_vae, tiny_var):
    vae = abstract_model(VQVAE, tiny_vae())
    var = abstract_model(VAR, tiny_var(patch_nums=(1, 2, 3)))
    with pytest.raises(ValueError, match="patch_nums"):
        Sampler(vae, var)


class _StopAfter:
    """A sampler that fails after n calls, like an interrupted job."""

    def __init__(self, sampler, n):
        self.sampler, self.n, self.num_classes, self.settings = sampler, n, sampler.num_classes, sampler.settings

    def __call__(self, *a, **kw):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.sampler(*a, **kw)


def test_evaluation_set_resumes_to_the_same_result(tiny_models, tmp_path):
    sampler = Sampler(*tiny_models, SamplingSettings(cfg=1.5, top_k=8))
    whole = write_evaluation_npz(sampler, tmp_path / "whole.npz", num=11, per_class=3, batch=4, seed=7)
    with pytest.raises(KeyboardInterrupt):
        write_evaluation_npz(_StopAfter(sampler, 2), tmp_path / "resumed.npz", num=11, per_class=3, batch=4, seed=7)
    assert len(list((tmp_path / "resumed.npz.parts").glob("chunk_*.npz"))) == 2
    resumed = write_evaluation_npz(sampler, tmp_path / "resumed.npz", num=11, per_class=3, batch=4, seed=7)
    a, b = np.load(whole), np.load(resumed)
    assert a["arr_0"].shape == (11, 8, 8, 3) and a["arr_0"].dtype == np.uint8
    assert a["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    assert not (tmp_path / "resumed.npz.parts").exists()
    with pytest.raises(FileExistsError):
        write_evaluation_npz(sampler, tmp_path / "whole.npz", num=11, per_class=3, batch=4)
    with pytest.raises(ValueError, match="more than --per-class 3"):
        write_evaluation_npz(sampler, tmp_path / "x.npz", num=100, per_class=3)


def test_sample_command_checks_outputs_before_the_work(digits_model_dir, tmp_path, capsys, monkeypatch):
    from var_jax import cli as cli_module
    monkeypatch.setattr(cli_module, "_load_models", lambda args: pytest.fail("loaded the models"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    base = ["sample", "--ckpt", str(digits_model_dir)]
    for args, message in (([ "--out", str(tmp_path)], "is a directory; give a file name"),
                          (["--out", str(a_file / "g.png")], "cannot write in"),
                          (["--out", str(tmp_path / "g.png"), "--png-dir", str(a_file)], "is a file; give a directory"),
                          (["--num", "0", "--npz", str(tmp_path / "s.npz")], "--num must be at least 1, got 0"),
                          (["--num", "4", "--npz", str(tmp_path)], "is a directory")):
        assert cli(base + args) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written, no stray .tmp
    assert a_file.read_text() == "keep"


def test_an_evaluation_set_on_one_device_is_sampled_without_a_mesh(digits_model_dir, tmp_path, monkeypatch):
    from var_jax import sample_npz
    write, layouts = sample_npz.write_evaluation_npz, []

    def spy(sampler, *args, **kwargs):
        layouts.append(sampler.layout)
        return write(sampler, *args, **kwargs)

    monkeypatch.setattr(sample_npz, "write_evaluation_npz", spy)
    out = tmp_path / "eval.npz"
    assert cli(["sample", "--ckpt", str(digits_model_dir), "--num", "4", "--npz", str(out)]) == 0
    assert layouts == [None] and np.load(out)["arr_0"].shape == (4, 32, 32, 3)


def test_default_classes_are_distinct_and_small_grids_are_scaled_up(digits_model_dir, tmp_path, capsys):
    grid, tokens = tmp_path / "grid.png", tmp_path / "t.npz"
    assert cli(["sample", "--ckpt", str(digits_model_dir), "--per-class", "1", "--out", str(grid),
                "--tokens", str(tokens)]) == 0
    labels = np.load(tokens)["labels"]
    assert len(labels) == 8 and len(set(labels.tolist())) == 8
    from PIL import Image
    assert Image.open(grid).size[1] >= 8 * 128  # 32-px images drawn at 128 px
    assert "compiling the sampler" in capsys.readouterr().err


def test_labels_must_be_whole_class_ids(tiny_models):
    sampler = Sampler(*tiny_models)
    with pytest.raises(ValueError, match="whole numbers"):
        sampler.labels([2.7], None, None)
    with pytest.raises(ValueError, match="no labels given"):
        sampler.labels([], None, None)
    assert np.asarray(sampler.labels([2.0, -1], None, None)).tolist() == [2, 5]


def test_edit_refuses_pixels_outside_the_model_range(tiny_models):
    vae, var = tiny_models
    keep = box_keep_mask((2, 2, 6, 6), 8, 4, "inpaint")
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\].*\[0, 255\]"):
        edit(vae, var, jnp.full((1, 8, 8, 3), 255.0).at[0, 0, 0, 0].set(0.0), keep)


def test_a_box_smaller_than_a_token_is_refused():
    with pytest.raises(ValueError, match="covers no token: tokens are 32×32-pixel cells"):
        box_keep_mask((100, 100, 110, 110), 256, 8, "inpaint")


def test_default_settings_fit_the_vocabulary():
    from var_jax.sample import OFFICIAL_SETTINGS, default_settings
    assert default_settings(4096) == OFFICIAL_SETTINGS  # the released models: the official settings
    assert default_settings(512).top_k == 112 and default_settings(16, cfg=4.0) == SamplingSettings(4.0, 4, 0.96)
    assert default_settings(512, top_k=0, top_p=0.5) == SamplingSettings(1.5, 0, 0.5)  # given settings win
