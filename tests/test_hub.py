"""``from_pretrained`` offline, end to end: a Hugging Face cache laid out as ``huggingface_hub`` lays it
out (refs, snapshots, blobs named by their hash), ``HF_HUB_OFFLINE=1``, and the real ``hf_hub_download``
resolving files from it; the official-format files are written here without torch."""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import numpy as np
import pytest

hub_constants = pytest.importorskip("huggingface_hub.constants")

from var_jax import cli, convert, hub, pth  # noqa: E402


def add_to_hub_cache(cache, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    """Files of one revision of a model repository, stored as the Hub client stores downloads."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def pth_bytes(tmp_path, obj) -> bytes:
    pth.save(obj, tmp_path / "tmp.pth")
    data = (tmp_path / "tmp.pth").read_bytes()
    (tmp_path / "tmp.pth").unlink()
    return data


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty offline Hub cache and an empty cache of converted models; → the Hub cache directory."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("VAR_JAX_CACHE", str(tmp_path / "converted"))
    # the client reads these variables when it is imported: set what they set
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def released_files(offline_hub, tmp_path, official_vae_sd, official_var_sd):
    """The fixture's official-format models under the released file names of FoundationVision/var."""
    add_to_hub_cache(offline_hub, hub.REPO_ID, {
        hub.TOKENIZER_FILE: pth_bytes(tmp_path, OrderedDict(official_vae_sd)),
        "var_d16.pth": pth_bytes(tmp_path, OrderedDict(official_var_sd))})
    return offline_hub


def assert_is_official(models, vae_sd, var_sd):
    for model, export, ref in ((models.vae, convert.vae_to_official, vae_sd),
                               (models.var, convert.var_to_official, var_sd)):
        ours = export(model)
        assert ours.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


@pytest.mark.slow
def test_from_pretrained_converts_once_then_loads(released_files, tmp_path, monkeypatch, official_vae_sd,
                                                  official_var_sd, capsys):
    import var_jax
    models = var_jax.from_pretrained("var_d16")
    assert_is_official(models, official_vae_sd, official_var_sd)
    assert models.config["source"] == {"repo_id": "FoundationVision/var",
                                       "files": ["vae_ch160v4096z32.pth", "var_d16.pth"]}
    assert "converting" in capsys.readouterr().err
    converted = list((tmp_path / "converted" / "FoundationVision--var").iterdir())
    assert len(converted) == 1 and converted[0].name.startswith("var_d16-")

    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    real_conversion = convert.models_from_official
    monkeypatch.setattr(convert, "models_from_official", no_conversion)
    again = var_jax.from_pretrained("var_d16", dtype="bfloat16")  # loads the converted directory
    assert again.var.cfg.dtype == "bfloat16"
    assert_is_official(again, official_vae_sd, official_var_sd)
    assert "converting" not in capsys.readouterr().err

    # a new revision of the file is converted again, into its own directory
    monkeypatch.setattr(convert, "models_from_official", real_conversion)
    changed = dict(official_var_sd, **{"head.bias": official_var_sd["head.bias"] + 1})
    add_to_hub_cache(released_files, hub.REPO_ID, {
        hub.TOKENIZER_FILE: pth_bytes(tmp_path, OrderedDict(official_vae_sd)),
        "var_d16.pth": pth_bytes(tmp_path, OrderedDict(changed))}, commit="b" * 40)
    models = hub.from_pretrained("var_d16")
    np.testing.assert_array_equal(np.asarray(models.var.head.bias[...]), changed["head.bias"])
    assert len(list((tmp_path / "converted" / "FoundationVision--var").iterdir())) == 2


def test_another_repository_and_a_trainer_checkpoint(offline_hub, tmp_path, official_vae_sd, official_var_sd):
    trainer = {"epoch": 1, "trainer": {"var_wo_ddp": OrderedDict(official_var_sd),
                                       "vae_local": OrderedDict(official_vae_sd)}}
    add_to_hub_cache(offline_hub, "someone/var-finetune", {"ar-ckpt-best.pth": pth_bytes(tmp_path, trainer)})
    models = hub.from_pretrained("someone/var-finetune", vae_file="ar-ckpt-best.pth", var_file="ar-ckpt-best.pth",
                                 cache_dir=tmp_path / "mine")
    assert_is_official(models, official_vae_sd, official_var_sd)
    assert len(list((tmp_path / "mine" / "someone--var-finetune").iterdir())) == 1


def test_offline_without_the_files(offline_hub):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        hub.from_pretrained("var_d20")


def test_names_that_are_not_models():
    with pytest.raises(ValueError, match="unknown model 'var_d17': use one of var_d16, var_d20"):
        hub.from_pretrained("var_d17")
    with pytest.raises(ValueError, match="give var_file="):
        hub.from_pretrained("someone/var-finetune")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VAR_JAX_CACHE", str(tmp_path / "a"))
    assert hub.cache_root() == tmp_path / "a"
    monkeypatch.delenv("VAR_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "var-jax"


@pytest.mark.slow
def test_cli_sample_with_model(released_files, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = cli.main(["sample", "--model", "var_d16", "--classes", "0,1", "--per-class", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.is_file()
    assert cli.main(["sample", "--model", "var_d16", "--ckpt", str(tmp_path), "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
