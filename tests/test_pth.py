"""``.pth`` files without torch: the zip format and the legacy one, views of shared storages, trainer
checkpoints, crafted pickles refused; and, where torch is installed, files exchanged with torch."""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from var_jax import convert, pth

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_]


def _values(rng):
    out = OrderedDict()
    for i, dt in enumerate(DTYPES):
        out[f"t{i}"] = (rng.normal(size=(3, 5)) * 9).astype(dt)
    out["scalar"] = np.array(7, np.int64)
    out["empty"] = np.zeros((0, 4), np.float32)
    return out


def test_save_load_round_trip(tmp_path):
    sd = _values(np.random.default_rng(0))
    pth.save(sd, tmp_path / "a.pth")
    back = pth.load(tmp_path / "a.pth")
    assert isinstance(back, OrderedDict) and list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    assert not back["t0"].flags.writeable  # a view of the mapped file, not a copy
    assert sorted(os.listdir(tmp_path)) == ["a.pth"]  # no temporary file left


def test_records_are_stored_and_aligned(tmp_path):
    pth.save({"w": np.ones(5, np.float32), "b": np.ones(3, np.int64)}, tmp_path / "m.pth")
    with zipfile.ZipFile(tmp_path / "m.pth") as z, open(tmp_path / "m.pth", "rb") as f:
        assert {"m/data.pkl", "m/byteorder", "m/version", "m/data/0", "m/data/1"} == set(z.namelist())
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert pth._zip_data_offset(f, info) % 64 == 0, info.filename


def test_views_share_storages_offsets_and_strides(tmp_path):
    """Tensors that are views of one storage (rows, transposes, strided slices) come back as views of
    the same mapped storage with their offsets and strides."""
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    views = OrderedDict(whole=x, row=x[2], col=x[:, 3], t=x.T, strided=x[1:, 1::2], tail=x.reshape(-1)[7:])
    pth.save(views, tmp_path / "v.pth")
    with zipfile.ZipFile(tmp_path / "v.pth") as z:
        assert [n for n in z.namelist() if "/data/" in n] == ["v/data/0"]  # one storage for all
    back = pth.load(tmp_path / "v.pth")
    for k, v in views.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    base = back["whole"]
    for k in views:
        assert np.shares_memory(back[k], base), k


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    x = np.arange(6, dtype=np.float32)
    pth.save({"a": x[1:]}, tmp_path / "bad.pth")  # offset 1, size 5 of a 6-element storage ...
    with zipfile.ZipFile(tmp_path / "bad.pth") as z:
        records = {n: z.read(n) for n in z.namelist()}
    records["bad/data.pkl"] = records["bad/data.pkl"].replace(b"(K\x05t", b"(K\x09t")  # ... now size 9
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as z:
        for n, data in records.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="reaches past its storage of 6 elements"):
        pth.load(tmp_path / "bad.pth")


def test_trainer_checkpoint_layout(tmp_path, official_var_sd, official_vae_sd):
    """The official trainer's ar-ckpt*.pth: the state dicts nested under ``trainer`` with the optimizer
    state and plain settings around them."""
    ckpt = {"epoch": 3, "iter": 120, "args": OrderedDict(depth=16, tblr=1e-4, pn="1_2_3", fp16=0, note=None),
            "trainer": {"config": {"patch_nums": (1, 2, 3), "prog_it": 0}, "var_wo_ddp": OrderedDict(official_var_sd),
                        "vae_local": OrderedDict(official_vae_sd),
                        "var_opt": {"optimizer": {
                            "state": {0: {"step": np.array(3.0, np.float32)}},
                            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]}}}}
    pth.save(ckpt, tmp_path / "ar-ckpt-last.pth")
    for part, ref in (("var_wo_ddp", official_var_sd), ("vae_local", official_vae_sd)):
        sd = convert.read_pth(str(tmp_path / "ar-ckpt-last.pth"), part)
        assert sd.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)
    with pytest.raises(ValueError, match="trainer checkpoint; it holds \\['var_wo_ddp', 'vae_local'\\]"):
        convert.read_pth(str(tmp_path / "ar-ckpt-last.pth"))


def test_read_pth_refuses_what_is_not_a_state_dict(tmp_path):
    pth.save([np.ones(2, np.float32)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        convert.read_pth(str(tmp_path / "list.pth"))


# -- crafted files ------------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _RunsCode(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        _zip_with_pickle(path, payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(pth.UnsafePickle, match=r"refusing to load the global (posix|nt)\.system"):
        pth.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [b"builtins\neval", b"torch._utils\n_rebuild_device_tensor_from_numpy",
                                         b"numpy.core.multiarray\n_reconstruct"])
def test_globals_a_state_dict_does_not_need_are_refused(tmp_path, global_name):
    _zip_with_pickle(tmp_path / "x.pth", b"\x80\x02c" + global_name + b"\nX\x01\x00\x00\x001\x85R.")
    with pytest.raises(pth.UnsafePickle, match=global_name.decode().replace("\n", ".")):
        pth.load(tmp_path / "x.pth")


def test_other_files_get_clear_messages(tmp_path):
    (tmp_path / "page.pth").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ValueError, match="neither a torch.save zip file nor the legacy torch.save format"):
        pth.load(tmp_path / "page.pth")
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as z:  # what torch.jit.save writes
        z.writestr("m/data.pkl", b"")
        z.writestr("m/code/__torch__.py", "")
    with pytest.raises(ValueError, match="TorchScript archive"):
        pth.load(tmp_path / "script.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a torch.save file"):
        pth.load(tmp_path / "other.zip")


def test_truncated_storage_is_reported(tmp_path):
    pth.save({"w": np.ones(16, np.float32)}, tmp_path / "t.pth")
    with zipfile.ZipFile(tmp_path / "t.pth") as z:
        records = {n: z.read(n) for n in z.namelist()}
    records["t/data/0"] = records["t/data/0"][:20]
    with zipfile.ZipFile(tmp_path / "t.pth", "w") as z:
        for n, data in records.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="truncated or damaged"):
        pth.load(tmp_path / "t.pth")


def _legacy_file(path, x: np.ndarray):
    """The pre-zip torch.save layout: magic number, protocol version, system info, the object (its
    storages by persistent id), the storage keys, then each storage as its size and raw bytes."""
    p = pth._PickleWriter()
    p.value(OrderedDict(w=x, row=x[1]))
    p.out += b"."
    f = io.BytesIO()
    for obj in (pth._LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, f, protocol=2)
    f.write(bytes(p.out))
    pickle.dump(["0"], f, protocol=2)
    f.write(struct.pack("<q", x.size) + x.tobytes())
    path.write_bytes(f.getvalue())


def test_legacy_format(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    _legacy_file(tmp_path / "old.pth", x)
    back = pth.load(tmp_path / "old.pth")
    np.testing.assert_array_equal(back["w"], x)
    np.testing.assert_array_equal(back["row"], x[1])


# -- against torch ------------------------------------------------------------------------------------
def test_torch_reads_what_we_write(tmp_path):
    torch = pytest.importorskip("torch")
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    sd = OrderedDict(w=x, t=x.T, part=x[1:, ::2], h=np.ones(3, np.float16), bf=np.full(2, 1.5, ml_dtypes.bfloat16),
                     i=np.arange(4, dtype=np.int64), b=np.array([True, False]))
    pth.save({"trainer": {"var_wo_ddp": sd, "config": {"patch_nums": (1, 2)}}, "epoch": 1}, tmp_path / "ours.pth")
    loaded = torch.load(tmp_path / "ours.pth", map_location="cpu", weights_only=True)
    assert loaded["epoch"] == 1 and loaded["trainer"]["config"] == {"patch_nums": (1, 2)}
    back = loaded["trainer"]["var_wo_ddp"]
    assert list(back) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k].float().numpy(), v.astype(np.float32), err_msg=k)
    assert back["t"].untyped_storage().data_ptr() == back["w"].untyped_storage().data_ptr()  # shared, as written
    assert back["bf"].dtype == torch.bfloat16 and back["b"].dtype == torch.bool


@pytest.mark.parametrize("zip_format", [True, False])
def test_we_read_what_torch_writes(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    base = torch.arange(30.0).reshape(5, 6)
    sd = OrderedDict(w=base, view=base[2:, 1::2], t=base.t(), param=torch.nn.Parameter(torch.ones(2, 3)),
                     half=torch.ones(2, dtype=torch.float16), bf=torch.full((2,), 0.5, dtype=torch.bfloat16),
                     long=torch.tensor([1, 2], dtype=torch.int64), flag=torch.tensor([True]), scalar=torch.tensor(3.0))
    torch.save({"trainer": {"var_wo_ddp": sd}, "args": {"depth": 16}}, tmp_path / "t.pth",
               _use_new_zipfile_serialization=zip_format)
    back = pth.load(tmp_path / "t.pth")
    assert back["args"] == {"depth": 16}
    for k, v in sd.items():
        got = back["trainer"]["var_wo_ddp"][k]
        assert got.shape == tuple(v.shape), k
        np.testing.assert_array_equal(got.astype(np.float32), v.detach().float().numpy(), err_msg=k)
    assert back["trainer"]["var_wo_ddp"]["bf"].dtype == ml_dtypes.bfloat16
