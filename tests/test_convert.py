"""Official state dicts ↔ var-jax models: round trips, key sets, error reports, inferred configurations,
pretrained directories, the ``convert`` command and released parameter counts.

The expected official key sets are generated here from the structure the official code builds
(spec §1.3-1.6 and §2.1-2.3), independently of ``var_jax.convert``.
"""
import dataclasses
import json
import math
import os
from collections import OrderedDict

import jax.numpy as jnp
import numpy as np
import pytest

import var_jax
from var_jax import checkpoint, cli, convert, pth
from var_jax.config import PATCH_NUMS, load_config, model_configs
from var_jax.models.state import abstract_model, assign_flat_state, flat_state
from var_jax.models.var import VAR, VARConfig
from var_jax.models.vqvae import VQVAE, VQVAEConfig


# -- the official key sets, written from the official module structure --------------------------------
def official_vqvae_shapes(cfg: VQVAEConfig) -> dict[str, tuple]:
    """{key: shape} of the official ``VQVAE.state_dict()`` for ``cfg``."""
    out = {}

    def conv(name, cin, cout, k):
        out[f"{name}.weight"] = (cout, cin, k, k)
        out[f"{name}.bias"] = (cout,)

    def norm(name, c):
        out[f"{name}.weight"] = (c,)
        out[f"{name}.bias"] = (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        conv(f"{name}.qkv", c, 3 * c, 1)
        conv(f"{name}.proj_out", c, c, 1)

    ch, mult, n, z = cfg.ch, cfg.ch_mult, len(cfg.ch_mult), cfg.z_channels
    top = ch * mult[-1]
    conv("encoder.conv_in", cfg.in_channels, ch, 3)
    cin = ch
    for i in range(n):  # encoder levels, attention only on the last one
        cout = ch * mult[i]
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
            if cfg.using_sa and i == n - 1:
                attn(f"encoder.down.{i}.attn.{j}", cout)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    for part in ("encoder", "decoder"):
        resnet(f"{part}.mid.block_1", top, top)
        if cfg.using_mid_sa:
            attn(f"{part}.mid.attn_1", top)
        resnet(f"{part}.mid.block_2", top, top)
    norm("encoder.norm_out", top)
    conv("encoder.conv_out", top, z, 3)
    conv("decoder.conv_in", z, top, 3)
    cin = top
    for i in reversed(range(n)):  # decoder levels run from the coarsest; one more block each
        cout = ch * mult[i]
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, cout)
            cin = cout
            if cfg.using_sa and i == n - 1:
                attn(f"decoder.up.{i}.attn.{j}", cout)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    norm("decoder.norm_out", ch * mult[0])
    conv("decoder.conv_out", ch * mult[0], cfg.in_channels, 3)
    out["quantize.ema_vocab_hit_SV"] = (len(cfg.v_patch_nums), cfg.vocab_size)
    if abs(cfg.quant_resi) > 1e-6:
        if cfg.share_quant_resi == 0:
            for k in range(cfg.default_qresi_counts or len(cfg.v_patch_nums)):
                conv(f"quantize.quant_resi.{k}", z, z, 3)
        elif cfg.share_quant_resi == 1:
            conv("quantize.quant_resi.qresi", z, z, 3)
        else:
            for k in range(cfg.share_quant_resi):
                conv(f"quantize.quant_resi.qresi_ls.{k}", z, z, 3)
    out["quantize.embedding.weight"] = (cfg.vocab_size, z)
    conv("quant_conv", z, z, cfg.quant_conv_ks)
    conv("post_quant_conv", z, z, cfg.quant_conv_ks)
    return out


VAR_BUFFER_NAMES = ("lvl_1L", "attn_bias_for_masking", ".attn.zero_k_bias")


def official_var_shapes(cfg: VARConfig) -> dict[str, tuple]:
    """{key: shape} of the official ``VAR.state_dict()`` for ``cfg``, buffers included."""
    C, L, hidden = cfg.embed_dim, sum(p * p for p in cfg.patch_nums), round(cfg.embed_dim * cfg.mlp_ratio)
    out = {"pos_start": (1, 1, C), "pos_1LC": (1, L, C), "lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L),
           "word_embed.weight": (C, cfg.Cvae), "word_embed.bias": (C,), "class_emb.weight": (cfg.num_classes + 1, C),
           "lvl_embed.weight": (len(cfg.patch_nums), C)}
    if cfg.shared_aln:
        out.update({"shared_ada_lin.1.weight": (6 * C, C), "shared_ada_lin.1.bias": (6 * C,)})
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        if cfg.attn_l2_norm:
            out[b + "attn.scale_mul_1H11"] = (1, cfg.num_heads, 1, 1)
        out.update({b + "attn.q_bias": (C,), b + "attn.v_bias": (C,), b + "attn.zero_k_bias": (C,),
                    b + "attn.mat_qkv.weight": (3 * C, C), b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
                    b + "ffn.fc1.weight": (hidden, C), b + "ffn.fc1.bias": (hidden,),
                    b + "ffn.fc2.weight": (C, hidden), b + "ffn.fc2.bias": (C,)})
        if cfg.shared_aln:
            out[b + "ada_gss"] = (1, 1, 6, C)
        else:
            out.update({b + "ada_lin.1.weight": (6 * C, C), b + "ada_lin.1.bias": (6 * C,)})
    out.update({"head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
                "head.weight": (cfg.vocab_size, C), "head.bias": (cfg.vocab_size,)})
    return out


def shapes_of(sd) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def exported_shapes_without_allocation(model, entries) -> dict[str, tuple]:
    """Official names and shapes of an abstract model's parameters, from the converter's entries."""
    flat = flat_state(model)
    return {k: convert._official_shape(e, flat[e.path].shape) for e in entries for k in e.keys}


def is_var_buffer(key: str) -> bool:
    return key in VAR_BUFFER_NAMES[:2] or key.endswith(VAR_BUFFER_NAMES[2])


def test_key_generators_match_the_fixture(official_vae_sd, official_var_sd, official_configs):
    """The generators above reproduce the key sets the official code recorded in the fixture."""
    vae_cfg, var_cfg = official_configs
    assert shapes_of(official_vae_sd) == official_vqvae_shapes(vae_cfg)
    assert shapes_of(official_var_sd) == official_var_shapes(var_cfg)


# -- round trips -----------------------------------------------------------------------------------------
VAE_VARIANTS = {
    "share4": {},
    "share0": dict(share_quant_resi=0),
    "share0_two_phis": dict(share_quant_resi=0, default_qresi_counts=2),
    "share1": dict(share_quant_resi=1),
    "share3": dict(share_quant_resi=3),
    "no_phi": dict(quant_resi=0.0),
    "quant_conv_ks1": dict(quant_conv_ks=1),
    "ch_mult_112": dict(ch_mult=(1, 1, 2), v_patch_nums=(1, 2)),
    "two_blocks_no_attn": dict(num_res_blocks=2, using_sa=False, using_mid_sa=False),
    "znorm": dict(using_znorm=True),
}


@pytest.mark.parametrize("variant", sorted(VAE_VARIANTS))
def test_vqvae_round_trip(variant, tiny_vae, helpers):
    cfg = tiny_vae(**VAE_VARIANTS[variant])
    model = abstract_model(VQVAE, cfg)
    helpers.randomize(model, seed=1)  # every value random (and concrete)
    sd = convert.vae_to_official(model)
    assert shapes_of(sd) == official_vqvae_shapes(cfg)
    assert all(v.dtype == np.float32 for v in sd.values())
    helpers.assert_same_params(convert.vae_from_official(sd, cfg), model)


def test_vqvae_phi_keys(tiny_vae):
    def phi_keys(**kw):
        model = abstract_model(VQVAE, tiny_vae(**kw))
        return sorted(k for e in convert.vae_entries(model) for k in e.keys if ".quant_resi." in k)

    def conv_keys(prefixes):
        return sorted(f"{p}.{n}" for p in prefixes for n in ("weight", "bias"))

    # 3 scales: share_quant_resi=0 gives one Phi per scale
    assert phi_keys(share_quant_resi=0) == conv_keys(f"quantize.quant_resi.{k}" for k in range(3))
    assert phi_keys(share_quant_resi=1) == conv_keys(["quantize.quant_resi.qresi"])
    assert phi_keys(share_quant_resi=4) == conv_keys(f"quantize.quant_resi.qresi_ls.{k}" for k in range(4))
    assert phi_keys(quant_resi=0.0) == []


VAR_VARIANTS = {
    "base": {},
    "shared_aln": dict(shared_aln=True),
    "l2_norm": dict(attn_l2_norm=True),
    "shared_l2": dict(shared_aln=True, attn_l2_norm=True),
    "pn_124": dict(patch_nums=(1, 2, 4), attn_l2_norm=True),
    "pn_1357": dict(patch_nums=(1, 3, 5, 7), depth=3),
}


@pytest.mark.parametrize("variant", sorted(VAR_VARIANTS))
def test_var_round_trip(variant, tiny_var, helpers):
    cfg = tiny_var(**VAR_VARIANTS[variant])
    model = abstract_model(VAR, cfg)
    helpers.randomize(model, seed=2)  # every value random (and concrete)
    sd = convert.var_to_official(model)
    assert shapes_of(sd) == official_var_shapes(cfg)
    helpers.assert_same_params(convert.var_from_official(sd, cfg), model)


def test_var_buffers_are_the_official_ones(tiny_var):
    cfg = tiny_var(patch_nums=(1, 2, 4))
    buffers = convert.var_buffers(cfg)
    lvl = np.array([0] + [1] * 4 + [2] * 16)
    np.testing.assert_array_equal(buffers["lvl_1L"], lvl[None])
    assert buffers["lvl_1L"].dtype == np.int64
    # 0 where level(key) <= level(query), -inf elsewhere
    expected = np.where(lvl[None, :] <= lvl[:, None], 0.0, -np.inf).astype(np.float32)[None, None]
    np.testing.assert_array_equal(buffers["attn_bias_for_masking"], expected)
    for i in range(cfg.depth):
        np.testing.assert_array_equal(buffers[f"blocks.{i}.attn.zero_k_bias"], np.zeros(cfg.embed_dim))


# -- released key sets, without allocating the models ---------------------------------------------------
def test_released_vqvae_keys():
    cfg = VQVAEConfig.from_dict(dict(var_jax.config.vqvae_f16()))
    model = abstract_model(VQVAE, cfg)
    shapes = exported_shapes_without_allocation(model, convert.vae_entries(model))
    shapes["quantize.ema_vocab_hit_SV"] = tuple(model.quantize.ema_vocab_hit_SV.shape)  # the one buffer
    assert len(shapes) == 324
    assert shapes == official_vqvae_shapes(cfg)
    for key, shape in {"encoder.conv_in.weight": (160, 3, 3, 3), "encoder.down.2.block.0.nin_shortcut.weight":
                       (320, 160, 1, 1), "encoder.down.4.attn.1.qkv.weight": (1920, 640, 1, 1),
                       "encoder.conv_out.weight": (32, 640, 3, 3), "decoder.conv_in.weight": (640, 32, 3, 3),
                       "decoder.conv_out.weight": (3, 160, 3, 3), "quantize.ema_vocab_hit_SV": (10, 4096),
                       "quantize.quant_resi.qresi_ls.3.weight": (32, 32, 3, 3),
                       "quantize.embedding.weight": (4096, 32), "post_quant_conv.bias": (32,)}.items():
        assert shapes[key] == shape, key
    params = {k: math.prod(s) for k, s in shapes.items() if k != "quantize.ema_vocab_hit_SV"}
    assert len(params) == 323
    assert sum(params.values()) == 108_948_355
    part = lambda prefix: sum(n for k, n in params.items() if k.startswith(prefix))  # noqa: E731
    assert (part("encoder."), part("decoder."), part("quantize.")) == (44_107_872, 64_653_923, 168_064)


def _released_var_shapes(cfg: VARConfig) -> dict[str, tuple]:
    model = abstract_model(VAR, cfg)
    shapes = exported_shapes_without_allocation(model, convert.var_entries(model))
    buffers = shapes_of(convert.var_buffers(cfg))
    assert not set(shapes) & set(buffers)
    return {**shapes, **buffers}


def test_released_var_d16_keys():
    cfg = VARConfig.for_depth(16)
    shapes = _released_var_shapes(cfg)
    assert len(shapes) == 220
    assert sum(map(is_var_buffer, shapes)) == 18
    assert shapes == official_var_shapes(cfg)
    for key, shape in {"blocks.3.attn.mat_qkv.weight": (3072, 1024), "blocks.0.attn.scale_mul_1H11": (1, 16, 1, 1),
                       "pos_1LC": (1, 680, 1024), "pos_start": (1, 1, 1024), "lvl_1L": (1, 680),
                       "attn_bias_for_masking": (1, 1, 680, 680), "class_emb.weight": (1001, 1024),
                       "blocks.15.ada_lin.1.weight": (6144, 1024), "blocks.7.ffn.fc1.weight": (4096, 1024),
                       "head_nm.ada_lin.1.weight": (2048, 1024), "head.weight": (4096, 1024)}.items():
        assert shapes[key] == shape, key
    params = sum(math.prod(s) for k, s in shapes.items() if not is_var_buffer(k))
    assert params == 310_283_520


def test_released_var_shared_aln_keys():
    _, cfg = model_configs(load_config("var_d36s_512"))
    C, L = 2304, 2240
    assert (cfg.embed_dim, cfg.seq_len, cfg.shared_aln) == (C, L, True)
    shapes = _released_var_shapes(cfg)
    assert shapes == official_var_shapes(cfg)
    assert shapes["shared_ada_lin.1.weight"] == (6 * C, C) and shapes["shared_ada_lin.1.bias"] == (6 * C,)
    assert shapes["pos_1LC"] == (1, L, C) and shapes["attn_bias_for_masking"] == (1, 1, L, L)
    for i in range(36):
        assert shapes[f"blocks.{i}.ada_gss"] == (1, 1, 6, C)
    assert not [k for k in shapes if ".ada_lin." in k and not k.startswith("head_nm.")]


# -- error reports ------------------------------------------------------------------------------------------
def test_var_mismatch_names_every_problem(official_var_sd, official_configs):
    _, cfg = official_configs
    sd = official_var_sd
    del sd["head.bias"]
    sd["blocks.9.extra.weight"] = np.zeros(3, np.float32)
    sd["blocks.1.ffn.fc1.bias"] = sd["blocks.1.ffn.fc1.bias"].reshape(2, -1)
    with pytest.raises(convert.CheckpointMismatch) as info:
        convert.var_from_official(sd, cfg)
    msg = str(info.value)
    for word in ("missing", "unexpected", "mis-shaped", "head.bias", "blocks.9.extra.weight",
                 "blocks.1.ffn.fc1.bias: checkpoint (2, 128), this configuration expects (256,)"):
        assert word in msg, word
    assert "buffers" not in msg


def test_var_wrong_level_buffer_is_reported(official_var_sd, official_configs):
    _, cfg = official_configs
    sd = official_var_sd
    sd["lvl_1L"] = sd["lvl_1L"].copy()
    sd["lvl_1L"][0, -1] = 4
    with pytest.raises(convert.CheckpointMismatch) as info:
        convert.var_from_official(sd, cfg)
    msg = str(info.value)
    assert "buffers that differ from the recomputed values" in msg and "lvl_1L" in msg
    assert "missing" not in msg and "unexpected" not in msg and "mis-shaped" not in msg


def test_vqvae_mismatch_names_every_problem(official_vae_sd, official_configs):
    cfg, _ = official_configs
    sd = official_vae_sd
    del sd["decoder.conv_out.bias"]
    sd["quantize.extra"] = np.zeros(3, np.float32)
    sd["quant_conv.weight"] = sd["quant_conv.weight"][:, :, :1]
    with pytest.raises(convert.CheckpointMismatch) as info:
        convert.vae_from_official(sd, cfg)
    msg = str(info.value)
    for word in ("missing", "unexpected", "mis-shaped", "decoder.conv_out.bias", "quantize.extra",
                 "quant_conv.weight: checkpoint (16, 16, 1, 3), this configuration expects (16, 16, 3, 3)"):
        assert word in msg, word


def test_var_into_another_width_reports_both_shapes(official_var_sd, official_configs):
    _, cfg = official_configs
    with pytest.raises(convert.CheckpointMismatch) as info:
        convert.var_from_official(official_var_sd, dataclasses.replace(cfg, embed_dim=32))
    msg = str(info.value)
    assert "mis-shaped" in msg and "missing" not in msg and "unexpected" not in msg
    assert "word_embed.weight: checkpoint (64, 16), this configuration expects (32, 16)" in msg
    assert "blocks.0.attn.mat_qkv.weight: checkpoint (192, 64), this configuration expects (96, 32)" in msg
    assert "embed_dim=32" in msg  # the configuration is shown, to help spot the wrong setting


def test_fixture_weights_load_into_the_fixture_config(official_vae_sd, official_var_sd, official_configs):
    vae_cfg, var_cfg = official_configs
    vae = convert.vae_from_official(official_vae_sd, vae_cfg)
    var = convert.var_from_official(official_var_sd, var_cfg)
    for ours, ref in ((convert.vae_to_official(vae), official_vae_sd), (convert.var_to_official(var), official_var_sd)):
        assert ours.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


# -- configurations read off a state dict ----------------------------------------------------------------
def test_infer_var_config(official_var_sd, official_config):
    cfg = convert.infer_var_config(official_var_sd)
    want = official_config["var"]
    for field in ("depth", "embed_dim", "num_heads", "mlp_ratio", "num_classes", "shared_aln", "attn_l2_norm"):
        assert getattr(cfg, field) == want[field], field
    assert cfg.patch_nums == tuple(official_config["vae"]["v_patch_nums"])
    assert (cfg.vocab_size, cfg.Cvae) == (official_config["vae"]["vocab_size"], official_config["vae"]["z_channels"])


def test_infer_vae_config(official_vae_sd, official_config):
    want = official_config["vae"]
    cfg = convert.infer_vae_config(official_vae_sd, want["v_patch_nums"])
    for field in ("ch", "num_res_blocks", "z_channels", "vocab_size", "share_quant_resi", "quant_conv_ks",
                  "quant_resi"):
        assert getattr(cfg, field) == want[field], field
    assert cfg.ch_mult == tuple(want["ch_mult"]) and cfg.v_patch_nums == tuple(want["v_patch_nums"])


@pytest.mark.parametrize("name", ["var_d16", "var_d30", "var_d36s_512"])
def test_released_configurations_are_read_off_their_weights(name):
    """What from_pretrained relies on: the released files' shapes alone give the released configurations
    (d36: the 512 px schedule and shared AdaLN)."""
    vae_cfg, var_cfg = model_configs(load_config(name))

    def placeholders(shapes):  # arrays of the right shapes that take no memory
        return {k: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), s, (0,) * len(s)) for k, s in shapes.items()}
    var_sd = {**placeholders(_released_var_shapes(var_cfg)), "lvl_1L": convert.var_buffers(var_cfg)["lvl_1L"]}
    inferred = convert.infer_var_config(var_sd)
    # the released configs keep the training recipe's initialisation, which weights cannot show or need
    assert dataclasses.replace(inferred, init_adaln_gamma=var_cfg.init_adaln_gamma) == var_cfg
    vae = abstract_model(VQVAE, vae_cfg)
    vae_sd = placeholders(exported_shapes_without_allocation(vae, convert.vae_entries(vae)))
    assert convert.infer_vae_config(vae_sd, var_cfg.patch_nums) == vae_cfg


@pytest.mark.parametrize("variant", ["share0", "share0_two_phis", "share1", "share3", "no_phi", "quant_conv_ks1",
                                     "ch_mult_112", "two_blocks_no_attn"])
def test_infer_vae_config_from_exported_dicts(variant, tiny_vae, helpers):
    cfg = tiny_vae(**VAE_VARIANTS[variant])
    model = abstract_model(VQVAE, cfg)
    helpers.randomize(model)
    sd = convert.vae_to_official(model)
    inferred = convert.infer_vae_config(sd, cfg.v_patch_nums)
    if cfg.quant_resi == 0:  # no Phi in the checkpoint, so nothing says how they would be shared
        inferred = dataclasses.replace(inferred, share_quant_resi=cfg.share_quant_resi)
    assert inferred == cfg


def test_infer_var_config_without_l2_norm_small_width(tiny_var, helpers):
    """Without scale_mul_1H11 no tensor shows the head count: a width that is not a multiple of the
    released head size (64) is refused with a message saying what to pass, and num_heads= resolves it."""
    cfg = tiny_var(attn_l2_norm=False)
    model = abstract_model(VAR, cfg)
    helpers.randomize(model)
    sd = convert.var_to_official(model)
    with pytest.raises(convert.CheckpointMismatch, match="give num_heads"):
        convert.infer_var_config(sd)
    inferred = convert.infer_var_config(sd, num_heads=cfg.num_heads)
    assert (inferred.embed_dim, inferred.num_heads, inferred.attn_l2_norm) == (cfg.embed_dim, cfg.num_heads, False)


# -- pretrained directories ---------------------------------------------------------------------------------
@pytest.fixture(params=["jax_leaves", "numpy_leaves"])
def small_models(request, tiny_vae, tiny_var, helpers):
    """A tiny VQVAE and VAR with random weights held as jax arrays (as a freshly built or trained model),
    or as NumPy arrays (as the models ``convert.*_from_official`` return, which ``var-jax convert`` saves)."""
    vae, var = abstract_model(VQVAE, tiny_vae()), abstract_model(VAR, tiny_var(patch_nums=(1, 2, 4)))
    for seed, model in enumerate((vae, var)):
        helpers.randomize(model, seed=seed)
        if request.param == "jax_leaves":
            assign_flat_state(model, {p: jnp.asarray(v) for p, v in flat_state(model).items()})
    return vae, var


def test_save_and_load_pretrained(small_models, tmp_path, helpers):
    vae, var = small_models
    out = checkpoint.save_pretrained(tmp_path / "m", vae=vae, var=var)
    assert out == (tmp_path / "m").absolute()
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary directory left behind
    loaded = var_jax.load_pretrained(tmp_path / "m")
    assert loaded.vae.cfg == vae.cfg and loaded.var.cfg == var.cfg
    assert loaded.config["img_size"] == 8
    helpers.assert_same_params(loaded.vae, vae)
    helpers.assert_same_params(loaded.var, var)


def test_load_pretrained_compute_dtype(small_models, tmp_path):
    _, var = small_models
    checkpoint.save_pretrained(tmp_path / "m", var=var)
    loaded = var_jax.load_pretrained(tmp_path / "m", dtype="bfloat16")
    assert loaded.vae is None and loaded.var.cfg.dtype == "bfloat16"
    assert {np.asarray(v).dtype for v in flat_state(loaded.var).values()} == {np.dtype(np.float32)}


def test_save_refuses_a_non_empty_directory(small_models, tmp_path):
    vae, var = small_models
    target = tmp_path / "m"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        checkpoint.save_pretrained(target, vae=vae, var=var)
    assert os.listdir(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_load_without_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        var_jax.load_pretrained(tmp_path / "m")


def test_load_with_a_config_that_does_not_match(small_models, tmp_path, request):
    _, var = small_models
    checkpoint.save_pretrained(tmp_path / "m", var=var)
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    config["var"]["embed_dim"] = 64
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        var_jax.load_pretrained(tmp_path / "m")


# -- the convert command ------------------------------------------------------------------------------------
def test_cli_convert_needs_an_input(tmp_path, capsys):
    assert cli.main(["convert", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "--vae" in err and "--var" in err
    assert not (tmp_path / "out").exists()


def test_cli_convert_missing_file(tmp_path, capsys):
    missing = tmp_path / "var_d16.pth"
    assert cli.main(["convert", "--var", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(missing) in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def fake_pth_files(official_vae_sd, official_var_sd, tmp_path):
    """vae.pth / var.pth: the fixture's official state dicts as .pth files (written without torch)."""
    for name, sd in (("vae.pth", official_vae_sd), ("var.pth", official_var_sd)):
        pth.save(OrderedDict(sd), tmp_path / name)
    return tmp_path / "vae.pth", tmp_path / "var.pth"


def _assert_converted(out, official_vae_sd, official_var_sd):
    loaded = var_jax.load_pretrained(out)
    for model, export, ref in ((loaded.vae, convert.vae_to_official, official_vae_sd),
                               (loaded.var, convert.var_to_official, official_var_sd)):
        if ref is None:
            assert model is None
            continue
        ours = export(model)
        assert ours.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


def test_cli_convert_reads_the_configuration_off_the_weights(fake_pth_files, official_vae_sd, official_var_sd,
                                                             tmp_path, capsys):
    vae_pth, var_pth = fake_pth_files
    out = tmp_path / "converted"
    assert cli.main(["convert", "--vae", str(vae_pth), "--var", str(var_pth), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    _assert_converted(out, official_vae_sd, official_var_sd)


def _write_config(path, official_config, with_var: bool):
    sections = {"img_size": official_config["img"], "vae": official_config["vae"]}
    if with_var:
        pn = official_config["vae"]["v_patch_nums"]
        sections["var"] = dict(official_config["var"], patch_nums=pn, vocab_size=official_config["vae"]["vocab_size"],
                               Cvae=official_config["vae"]["z_channels"])
    path.write_text("import ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({sections!r})\n")
    return path


def test_cli_convert_with_a_config_file(fake_pth_files, official_config, official_vae_sd, official_var_sd, tmp_path):
    vae_pth, var_pth = fake_pth_files
    config = _write_config(tmp_path / "tiny.py", official_config, with_var=True)
    out = tmp_path / "converted"
    assert cli.main(["convert", "--vae", str(vae_pth), "--var", str(var_pth), "--config", str(config),
                     "--out", str(out)]) == 0
    _assert_converted(out, official_vae_sd, official_var_sd)


def test_cli_convert_tokenizer_with_a_tokenizer_config(fake_pth_files, official_config, official_vae_sd, tmp_path,
                                                       capsys):
    assert "var" not in load_config("vqvae_f16")  # the shipped tokenizer config has this shape too
    vae_pth, _ = fake_pth_files
    config = _write_config(tmp_path / "tiny_vae.py", official_config, with_var=False)
    out = tmp_path / "converted"
    code = cli.main(["convert", "--vae", str(vae_pth), "--config", str(config), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    _assert_converted(out, official_vae_sd, None)


def test_cli_convert_back_to_pth(fake_pth_files, official_vae_sd, official_var_sd, tmp_path, capsys):
    vae_pth, var_pth = fake_pth_files
    out = tmp_path / "converted"
    assert cli.main(["convert", "--vae", str(vae_pth), "--var", str(var_pth), "--out", str(out)]) == 0
    back = tmp_path / "back"  # and back to .pth files with the official names
    assert cli.main(["convert", "--to-official", "--ckpt", str(out), "--out", str(back)]) == 0
    capsys.readouterr()
    try:
        import torch  # the official code reads them with torch.load

        def load(path):
            return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    except ImportError:
        load = pth.load
    for name, ref in (("vae", official_vae_sd), ("var", official_var_sd)):
        sd = load(back / f"{name}.pth")
        assert sd.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)


# -- released parameter counts, without allocation ---------------------------------------------------------
@pytest.mark.parametrize("name, count", [
    ("var_d16", 310_283_520),
    ("var_d20", 600_917_136),
    ("var_d24", 1_033_399_360),
    ("var_d30", 2_010_020_356),
    ("var_d36s_512", 2_353_893_904),
])
def test_released_var_parameter_counts(name, count, helpers):
    _, var_cfg = model_configs(load_config(name))
    assert helpers.param_count(abstract_model(VAR, var_cfg)) == count


def test_released_configs_are_the_official_settings():
    _, d36 = model_configs(load_config("var_d36s_512"))
    assert d36.patch_nums == PATCH_NUMS[512] and d36.shared_aln and d36.attn_l2_norm
    assert (d36.depth, d36.embed_dim, d36.num_heads) == (36, 2304, 36)
    _, d16 = model_configs(load_config("var_d16"))
    assert d16.patch_nums == PATCH_NUMS[256] and not d16.shared_aln and d16.attn_l2_norm


def test_released_vqvae_parameter_count(helpers):
    cfg = VQVAEConfig.from_dict(dict(load_config("vqvae_f16")["vae"]))  # a tokenizer-only config
    assert cfg.ch == 160
    assert helpers.param_count(abstract_model(VQVAE, cfg)) == 108_948_355
    for name in ("var_d16", "var_d36s_512"):  # the tokenizer that comes with the VARs (256 and 512 px)
        vae_cfg, _ = model_configs(load_config(name))
        assert dataclasses.replace(vae_cfg, v_patch_nums=cfg.v_patch_nums) == cfg
