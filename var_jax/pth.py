"""``torch.save`` files read and written without torch.

A ``.pth`` file is a zip archive: ``<name>/data.pkl`` (a pickle whose tensors refer to storages by
key), one raw record per storage (``<name>/data/<key>``) and ``<name>/byteorder``.  The pickle is read
with a restricted unpickler that builds only what a state dict (or a training checkpoint of plain
Python values around state dicts) needs and refuses every other global by name, so a crafted file
cannot run code.  Storages are memory-mapped: tensors are read-only NumPy views of the file (shared
storages, offsets and strides included), so reading a 1.2 GB checkpoint does not copy it.  The legacy
format (``torch.save(..., _use_new_zipfile_serialization=False)``: pickles followed by raw storages)
is read the same way.  ``save`` writes the zip format, which ``torch.load`` reads.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_DTYPE_STORAGES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items() if k != "UntypedStorage"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickle(pickle.UnpicklingError, ValueError):
    """The file's pickle asks for something a state dict does not need (a possible attack)."""


class _Storage:
    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), int(numel)


class _Tensor:
    """A tensor as the pickle describes it; becomes a NumPy view once the storages are mapped."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise UnsafePickle(f"a tensor must be rebuilt from a storage, got {type(storage).__name__}")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_):  # v2 adds requires_grad, hooks, metadata
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_):  # requires_grad, backward hooks (and state) do not matter here
    return data


def _encode(text, encoding="latin1"):  # how protocol 2 pickles bytes
    return str(text).encode(encoding)


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refusing to load the global {module}.{name}: a weights file needs only tensors, "
                               f"storages and OrderedDict (the file may be crafted to run code; if you trust it, "
                               f"load it with torch)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickle(f"unknown persistent id in the pickle: {str(pid)[:80]}")
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickle("storage views (a format of torch < 1.0) are not supported; re-save the file with "
                               "a current torch")
        return _Storage(str(pid[2]), pid[1].dtype, pid[4])


def _unpickle(f) -> Any:
    try:
        return _Unpickler(f).load()
    except UnsafePickle:
        raise
    except Exception as e:
        raise ValueError(f"the pickle is damaged or not a torch.save file: {e}") from e


def _resolve(obj, arrays: dict[str, np.ndarray]):
    """Replace every tensor in ``obj`` (dicts, lists, tuples) by its view of the mapped storage."""
    if isinstance(obj, _Tensor):
        base = arrays[obj.storage.key]
        n = base.size
        if any(s < 0 for s in obj.size + obj.stride) or len(obj.size) != len(obj.stride):
            raise ValueError(f"tensor of size {obj.size} and stride {obj.stride} is malformed")
        last = obj.offset + sum((d - 1) * s for d, s in zip(obj.size, obj.stride)) if all(obj.size) else obj.offset - 1
        if obj.offset < 0 or last >= n:
            raise ValueError(f"tensor of size {obj.size}, stride {obj.stride} at offset {obj.offset} reaches past "
                             f"its storage of {n} elements (the file is damaged)")
        if not all(obj.size):
            return np.zeros(obj.size, base.dtype)
        if not obj.size:  # a scalar
            return base[obj.offset:obj.offset + 1].reshape(())
        item = base.dtype.itemsize
        return np.lib.stride_tricks.as_strided(base[obj.offset:], obj.size, [s * item for s in obj.stride],
                                               writeable=False)
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v, arrays)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, arrays) for v in obj)
    return obj


def _storages(obj, found: dict[str, _Storage]) -> dict[str, _Storage]:
    if isinstance(obj, _Tensor):
        found[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, found)
    return found


def _map(path, offset: int, storage: _Storage, big_endian: bool, available: int) -> np.ndarray:
    nbytes = storage.numel * storage.dtype.itemsize
    if nbytes > available:
        raise ValueError(f"storage {storage.key} needs {nbytes} bytes, the file holds {available} (the file is "
                         f"truncated or damaged)")
    dtype = storage.dtype.newbyteorder(">") if big_endian else storage.dtype
    if nbytes == 0:
        return np.zeros(0, dtype)
    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(storage.numel,))
    return arr.astype(storage.dtype) if big_endian else arr


def _zip_data_offset(f, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (whose extra field may differ from
    the central directory's)."""
    f.seek(info.header_offset)
    header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError(f"damaged zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _load_zip(path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
            raise ValueError(f"{path} is a TorchScript archive (torch.jit.save), not a torch.save file")
        if len(pkls) != 1:
            raise ValueError(f"{path} is a zip file but not a torch.save file (no <name>/data.pkl)")
        prefix = pkls[0][:-len("data.pkl")]
        obj = _unpickle(io.BytesIO(z.read(pkls[0])))
        byteorder = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        arrays = {}
        with open(path, "rb") as f:
            for key, storage in _storages(obj, {}).items():
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise ValueError(f"{path} has no record {name} for one of its tensors (the file is damaged)")
                info = z.getinfo(name)
                if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; read such a record once
                    raw = np.frombuffer(z.read(name), storage.dtype.newbyteorder(">" if byteorder == "big" else "<"))
                    arrays[key] = raw.astype(storage.dtype)[:storage.numel]
                    if raw.size < storage.numel:
                        raise ValueError(f"record {name} is shorter than its storage (the file is damaged)")
                    continue
                arrays[key] = _map(path, _zip_data_offset(f, info), storage, byteorder == "big", info.file_size)
    return _resolve(obj, arrays)


def _load_legacy(path) -> Any:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            magic = _Unpickler(f).load()
        except UnsafePickle:
            raise
        except Exception:
            magic = None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path} is neither a torch.save zip file nor the legacy torch.save format")
        _unpickle(f)  # protocol version
        info = _unpickle(f)
        obj = _unpickle(f)
        keys = _unpickle(f)
        little = info.get("little_endian", True) if isinstance(info, dict) else True
        storages = _storages(obj, {})
        arrays = {}
        for key in keys:
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            storage = storages.get(str(key))
            if storage is None:  # a storage no tensor refers to: its size is unknown, and it is not needed
                raise ValueError(f"{path}: storage {key} is not referenced by any tensor (the file is damaged)")
            storage = _Storage(storage.key, storage.dtype, numel)
            start = f.tell()
            arrays[storage.key] = _map(path, start, storage, not little, size - start)
            f.seek(start + numel * storage.dtype.itemsize)
        missing = set(storages) - set(arrays)
        if missing:
            raise ValueError(f"{path}: storages {sorted(missing)[:5]} are missing (the file is damaged)")
    return _resolve(obj, arrays)


def load(path: str | os.PathLike) -> Any:
    """The object a ``torch.save`` file holds, with tensors as read-only NumPy arrays mapped from the file."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


# -- writing ---------------------------------------------------------------------------------------
def _storage_view(a: np.ndarray) -> tuple[np.ndarray, int, tuple, tuple]:
    """(storage, offset, size, stride) of an array: a view of a contiguous array shares that array as
    its storage (as a torch view shares its tensor's); anything else gets a storage of its own."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    item = a.dtype.itemsize
    if root is not a and root.dtype == a.dtype and root.flags.c_contiguous:
        start = a.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        if start % item == 0 and all(s >= 0 and s % item == 0 for s in a.strides):
            return root, start // item, a.shape, tuple(s // item for s in a.strides)
    a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray would make a scalar 1-d)
    return a, 0, a.shape, tuple(s // item for s in a.strides)


class _PickleWriter:
    """A protocol-2 pickle as ``torch.save`` writes it: tensors as ``_rebuild_tensor_v2`` of storages
    given by persistent ids; dicts, lists, tuples and scalars as plain pickle opcodes."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.storages: dict[int, tuple[str, np.ndarray]] = {}  # id(storage array) → (key, array)

    def glob(self, module: str, name: str):
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def value(self, v):
        if v is None:
            self.out += b"N"
        elif isinstance(v, bool):
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, (int, np.integer)) and not isinstance(v, np.ndarray):
            self.int(int(v))
        elif isinstance(v, (float, np.floating)):
            self.out += b"G" + struct.pack(">d", float(v))
        elif isinstance(v, str):
            b = v.encode("utf-8")
            self.out += b"X" + struct.pack("<I", len(b)) + b
        elif isinstance(v, tuple):
            self.out += b"("
            for x in v:
                self.value(x)
            self.out += b"t"
        elif isinstance(v, list):
            self.out += b"]("
            for x in v:
                self.value(x)
            self.out += b"e"
        elif isinstance(v, dict):
            if isinstance(v, OrderedDict):
                self.glob("collections", "OrderedDict")
                self.out += b")R"
            else:
                self.out += b"}"
            self.out += b"("
            for k, x in v.items():
                self.value(k)
                self.value(x)
            self.out += b"u"
        elif isinstance(v, np.ndarray):
            self.tensor(v)
        else:
            raise TypeError(f"cannot write a {type(v).__name__} to a .pth file (only arrays, dicts, lists, tuples, "
                            f"str, int, float, bool and None)")

    def int(self, n: int):
        if 0 <= n < 256:
            self.out += b"K" + bytes([n])
        elif -2**31 <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)
        else:
            b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b

    def tensor(self, a: np.ndarray):
        if a.dtype not in _DTYPE_STORAGES:
            raise TypeError(f"arrays of dtype {a.dtype} have no torch storage type")
        base, offset, size, stride = _storage_view(a)
        key, _ = self.storages.setdefault(id(base), (str(len(self.storages)), base))
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # the arguments; first the persistent id ('storage', type, key, location, numel)
        self.value("storage")
        self.glob("torch", _DTYPE_STORAGES[a.dtype])
        self.value(key)
        self.value("cpu")
        self.int(base.size)
        self.out += b"tQ"
        for x in (offset, tuple(map(int, size)), tuple(map(int, stride)), False):
            self.value(x)
        self.glob("collections", "OrderedDict")  # backward hooks
        self.out += b")RtR"


def save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` without torch: ``obj`` (arrays in dicts, lists and tuples of plain values) to a
    zip file that ``torch.load`` reads, arrays as tensors (views of one array share its storage).
    Written to a temporary name and renamed, so a failure leaves no partial file."""
    path = os.fspath(path)
    p = _PickleWriter()
    p.value(obj)
    p.out += b"."
    prefix = os.path.splitext(os.path.basename(path))[0] or "archive"
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            _write_aligned(z, f"{prefix}/data.pkl", bytes(p.out))
            _write_aligned(z, f"{prefix}/byteorder", b"little")
            for key, base in p.storages.values():
                _write_aligned(z, f"{prefix}/data/{key}", _little_endian_bytes(base))
            _write_aligned(z, f"{prefix}/version", b"3\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _little_endian_bytes(a: np.ndarray) -> memoryview:
    a = a.reshape(-1)  # C-contiguous already
    return a.astype(a.dtype.newbyteorder("<"), copy=False).view(np.uint8).data


def _write_aligned(z: zipfile.ZipFile, name: str, data) -> None:
    """A stored record whose bytes start at a multiple of 64 (as torch aligns them, so they map well)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = z.fp.tell() + 30 + len(name.encode()) + 4  # local header, name, extra-field header
    info.extra = struct.pack("<HH", 0x4246, -start % 64) + b"Z" * (-start % 64)
    info.file_size = len(data)
    with z.open(info, "w", force_zip64=len(data) > 2**31) as w:
        w.write(data)
