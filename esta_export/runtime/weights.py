"""The family's unique weights, loaded once and handed to every ONNX Runtime session.

A shared external-data file alone does not save memory: each session reads its own copy. The
bundle writer records, per stitch, which initializer names point to which unique tensor of
``weights.bin`` (``models/weights.json``). Each unique tensor is read once into one numpy array,
wrapped in an ``OrtValue`` and given to every session with ``SessionOptions.add_initializer``,
so K loaded stitches cost about the unique weights, not K copies.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from .errors import BundleError, IntegrityError


_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def check_index(index, data_path: Path, where: str = "models/weights.json") -> dict:
    """The weights index agrees with itself and with weights.bin, or one BundleError line.

    Every tensor lies inside the data file, its dtype is one numpy reads, its shape's element
    count times the item size is its length, and every stitch maps names to tensors that exist.
    """
    def bad(msg: str) -> BundleError:
        return BundleError(f"bundle {where}: {msg}", hint="the weights index was edited or damaged; re-copy the bundle")

    if not isinstance(index, dict) or not isinstance(index.get("tensors"), list) \
            or not isinstance(index.get("stitches"), dict):
        raise bad("must be an object with 'tensors' (a list) and 'stitches' (an object)")
    try:
        size = data_path.stat().st_size
    except OSError:
        raise BundleError(f"bundle file {data_path.name} is missing", hint="re-copy the complete bundle") from None
    for i, t in enumerate(index["tensors"]):
        if not isinstance(t, dict):
            raise bad(f"tensors[{i}] is not an object")
        off, length, dt, shape = t.get("offset"), t.get("length"), t.get("dtype"), t.get("shape")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (off, length)):
            raise bad(f"tensors[{i}] offset/length must be integers >= 0, got {off!r:.30}, {length!r:.30}")
        if off + length > size:
            raise bad(f"tensors[{i}] reaches byte {off + length}, past the end of {data_path.name} ({size} bytes)")
        try:
            ok = isinstance(dt, str) and len(dt) < 16 and np.dtype(dt).name in _DTYPES
        except TypeError:
            ok = False
        if not ok:
            raise bad(f"tensors[{i}] dtype {dt!r:.40} is not one of {', '.join(_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 16 or \
                any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise bad(f"tensors[{i}] shape must be a list of integers >= 0, got {shape!r:.60}")
        n = 1
        for d in shape:
            n *= d
        if n * np.dtype(dt).itemsize != length:
            raise bad(f"tensors[{i}] shape {shape} of {dt} needs {n * np.dtype(dt).itemsize} bytes, "
                      f"the index says {length}")
    count = len(index["tensors"])
    for sid, names in index["stitches"].items():
        if not isinstance(names, dict):
            raise bad(f"stitches[{sid!r:.20}] is not an object {{initializer name: tensor index}}")
        for name, i in names.items():
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
                raise bad(f"stitch {sid!r:.20} initializer {name!r:.40} points to tensor {i!r:.20}, "
                          f"not one of the {count} tensors")
    return index


class SharedWeights:
    def __init__(self, index: dict, data_path: Path, *, check_tensors: bool = False) -> None:
        self.index = check_index(index, data_path)
        self.data_path = data_path
        # When the bundle was opened without hashing every file, each tensor is checked against its
        # recorded hash as it is read, so tampered weights still never reach a session.
        self.check_tensors = check_tensors
        self._arrays: dict[int, np.ndarray] = {}
        self._values: dict[int, object] = {}
        self._users: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def names(self, stitch_id: int | str) -> dict[str, int]:
        try:
            return self.index["stitches"][str(stitch_id)]
        except KeyError:
            raise BundleError(f"stitch {stitch_id} has no entry in the weights index",
                              hint="re-create the bundle") from None

    def _read(self, i: int) -> np.ndarray:
        t = self.index["tensors"][i]
        dtype = np.dtype(t["dtype"])
        count = int(t["length"]) // dtype.itemsize
        arr = np.fromfile(self.data_path, dtype=dtype, count=count, offset=int(t["offset"]))
        if arr.size != count:
            raise BundleError(f"{self.data_path.name} is shorter than the weights index says",
                              hint="re-copy the bundle")
        arr = arr.reshape(t["shape"])
        if self.check_tensors and t.get("sha256"):
            key = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()
            if key != t["sha256"]:
                raise IntegrityError(f"bundle file models/{self.data_path.name} does not match its recorded "
                                     f"sha256 (tensor {i})", hint="the file was modified or corrupted; re-copy the bundle")
        return arr

    def acquire(self, stitch_id: int, ort) -> dict[str, object]:
        """OrtValues for ``stitch_id``'s initializers (read once, then shared)."""
        out = {}
        with self._lock:
            for name, i in self.names(stitch_id).items():
                if i not in self._values:
                    self._arrays[i] = self._read(i)  # the OrtValue borrows this buffer: keep it alive
                    self._values[i] = ort.OrtValue.ortvalue_from_numpy(self._arrays[i])
                self._users.setdefault(i, set()).add(str(stitch_id))
                out[name] = self._values[i]
        return out

    def release(self, stitch_id: int) -> None:
        """Drop tensors no loaded stitch uses any more (call after the session is gone)."""
        with self._lock:
            for i in set(self.names(stitch_id).values()):
                users = self._users.get(i, set())
                users.discard(str(stitch_id))
                if not users:
                    self._values.pop(i, None)
                    self._arrays.pop(i, None)
                    self._users.pop(i, None)

    @property
    def resident_bytes(self) -> int:
        return int(sum(a.nbytes for a in self._arrays.values()))
