"""Read PyTorch *legacy* (pre-zip) checkpoints with numpy alone, without running pickled code.

Layout of a legacy ``torch.save`` file::

    pickle(magic number) pickle(protocol version) pickle(sys info)
    pickle(state dict)          # tensors name storages by persistent id
    pickle([storage keys])
    per key, in that order: int64 LE element count, then the raw bytes

The pickles are read by :class:`_SafeUnpickler`, which admits only the handful of globals a
state dict needs; anything else raises :class:`UnsafePickleError` before it is called. Every size the
file declares (a pickled string, a storage) is checked against the bytes the file has left before
anything is allocated for it: a few hundred bytes declaring terabytes are a :class:`LegacyFormatError`,
never a MemoryError.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "LegacyFormatError", "load_legacy_state_dict", "STORAGE_DTYPES"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage type name -> numpy dtype (little-endian; byte order fixed up from sys info).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # raw bits; widened to float32 on load
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}


class UnsafePickleError(ValueError):
    """The pickle names a global (callable or class) that this reader refuses to load."""


class LegacyFormatError(ValueError):
    """The file is not a readable PyTorch legacy checkpoint."""


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only carries the numpy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """A storage announced by a persistent id; its data is read after the state dict."""

    def __init__(self, stype: _StorageType, key: str, size: int):
        self.stype, self.key, self.size = stype, key, size
        self.data: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self.data is None:
            raise LegacyFormatError(f"storage {self.key!r} was never read from the file")
        return self.data


class _StorageView:
    """A storage that is a slice of a root storage (legacy ``view_metadata``)."""

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size
        self.stype = root.stype

    def array(self) -> np.ndarray:
        return self.root.array()[self.offset : self.offset + self.size]


class _PendingTensor:
    """What ``_rebuild_tensor_v2`` returns while unpickling; turned into an array afterwards."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise LegacyFormatError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        if len(self.size) != len(self.stride):
            raise LegacyFormatError(f"tensor size {self.size} and stride {self.stride} differ in rank")

    def materialize(self) -> np.ndarray:
        """Copy the (possibly strided, offset) view out of the storage, bounds-checked."""
        flat = self.storage.array()
        if self.offset < 0 or any(s < 0 for s in self.size) or any(s < 0 for s in self.stride):
            raise LegacyFormatError(f"negative offset/size/stride in tensor {self.size}/{self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if last >= flat.size:
            raise LegacyFormatError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"reaches past its storage of {flat.size} elements"
            )
        count = math.prod(self.size)
        if count > flat.size:  # zero or overlapping strides would blow a tiny file up into a huge array
            raise LegacyFormatError(
                f"tensor of size {self.size} ({count} elements) is larger than its storage of {flat.size} "
                f"elements (stride {self.stride}): refused")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(st * item for st in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    """Safe replacement for ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks, metadata ignored)."""
    return _PendingTensor(storage, storage_offset, size, stride)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Bounded:
    """A file for the unpickler whose reads never ask for more bytes than the file has left: a declared
    length beyond that is a format error before any buffer of that length exists."""

    def __init__(self, f: BinaryIO):
        self.f, self.size = f, os.fstat(f.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        if n is not None and n > max(left, 0):
            raise LegacyFormatError(f"the pickle declares {n} bytes where the file has {max(left, 0)} left")
        return self.f.read(n)

    def readline(self, limit: int = -1) -> bytes:
        return self.f.readline(limit)


# Protocol-5 out-of-band buffers allocate before they read; a legacy checkpoint (protocol 2) has none.
_REFUSED_OPCODES = {pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER}


class _SafeUnpickler(pickle._Unpickler):  # the Python unpickler: each read goes through _Bounded first
    """Unpickler that resolves only allow-listed globals and torch storage persistent ids."""

    dispatch = {op: fn for op, fn in pickle._Unpickler.dispatch.items() if bytes([op]) not in _REFUSED_OPCODES}

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None):
        super().__init__(_Bounded(file))
        self.storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from the pickle: only "
                "torch._utils._rebuild_tensor_v2, collections.OrderedDict and torch storage types are allowed"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafePickleError(f"unsupported persistent id {kind!r} (only 'storage' is allowed)")
        if len(pid) != 6:
            raise LegacyFormatError(f"malformed storage persistent id {pid!r}")
        _, stype, key, _location, size, view = pid
        if not isinstance(stype, _StorageType):
            raise LegacyFormatError(f"storage {key!r} has type {stype!r}, not a torch storage type")
        key, size = str(key), int(size)
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(stype, key, size)
        elif root.stype is not stype:
            raise LegacyFormatError(f"storage {key!r} used with two types: {root.stype} and {stype}")
        if view is None:
            return root
        _view_key, offset, view_size = view  # a slice of the root storage
        return _StorageView(root, int(offset), int(view_size))


def _materialize(obj):
    """Replace pending tensors inside (nested) containers with numpy arrays."""
    if isinstance(obj, _PendingTensor):
        return obj.materialize()
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load(unpickler: _SafeUnpickler, path: Path, what: str):
    """One pickle of the file; whatever goes wrong in it (bar a refused global) is a format error."""
    try:
        return unpickler.load()
    except (UnsafePickleError, LegacyFormatError):
        raise
    except Exception as exc:
        raise LegacyFormatError(f"{path}: {what} is not a readable pickle ({type(exc).__name__}: {exc})") from None


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise LegacyFormatError(f"file ends inside {what} ({len(data)} of {n} bytes)")
    return data


def _check_room(f: BinaryIO, count: int, itemsize: int, what: str, path: Path) -> None:
    """Refuse a declared size the rest of the file cannot hold, before anything is allocated for it
    (a few hundred bytes declaring terabytes must be a format error, not a MemoryError)."""
    if count < 0:
        raise LegacyFormatError(f"{path}: {what} declares a negative size ({count} elements)")
    left = os.fstat(f.fileno()).st_size - f.tell()
    if count * itemsize > left:
        raise LegacyFormatError(f"{path}: {what} declares {count} elements ({count * itemsize} bytes) but the "
                                f"file has only {max(left, 0)} bytes left")


def _read_header(f: BinaryIO, path: Path) -> bool:
    """Check magic number and protocol version; return whether the data is little-endian."""
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):
        raise LegacyFormatError(
            f"{path} is a zip-format PyTorch checkpoint (torch >= 1.6 default), not the legacy format"
        )
    try:
        magic = _SafeUnpickler(f).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise LegacyFormatError(f"{path} is not a legacy PyTorch checkpoint: {exc}") from None
    if magic != MAGIC_NUMBER:
        raise LegacyFormatError(f"{path} is not a legacy PyTorch checkpoint (bad magic number {magic!r})")
    version = _SafeUnpickler(f).load()
    if version != PROTOCOL_VERSION:
        raise LegacyFormatError(f"{path}: unsupported legacy protocol version {version!r}")
    sys_info = _SafeUnpickler(f).load()
    return bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True


def load_legacy_state_dict(path) -> OrderedDict[str, np.ndarray]:
    """Load a legacy-format ``torch.save`` state dict as ``{name: numpy array}`` (copies, C-ordered).

    Raises :class:`UnsafePickleError` if the pickle names any global beyond the allow-list,
    :class:`LegacyFormatError` (both ValueError) if the file is not a legacy checkpoint.
    """
    path = Path(path)
    with open(path, "rb") as f:
        little = _read_header(f, path)
        storages: dict[str, _Storage] = {}
        result = _load(_SafeUnpickler(f, storages), path, "the state dict")
        keys = _load(_SafeUnpickler(f), path, "the list of storage keys")
        if not isinstance(keys, list):
            raise LegacyFormatError(f"{path}: expected a list of storage keys, got {type(keys).__name__}")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise LegacyFormatError(f"{path}: storage key {key!r} is not used by any tensor")
            (count,) = struct.unpack("<q", _read_exact(f, 8, f"size of storage {key!r}"))
            if count != storage.size:
                raise LegacyFormatError(
                    f"{path}: storage {key!r} holds {count} elements, tensor header says {storage.size}"
                )
            dtype = storage.stype.dtype.newbyteorder("<" if little else ">")
            _check_room(f, count, dtype.itemsize, f"storage {key!r}", path)
            raw = _read_exact(f, count * dtype.itemsize, f"data of storage {key!r}")
            data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
            if storage.stype.name == "BFloat16Storage":
                data = (data.astype(np.uint32) << 16).view(np.float32)
            storage.data = data
    state = _materialize(result)
    if not isinstance(state, dict):
        raise LegacyFormatError(f"{path}: top-level object is {type(state).__name__}, not a state dict")
    return OrderedDict(state)
