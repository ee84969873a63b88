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


class SharedWeights:
    def __init__(self, index: dict, data_path: Path, *, check_tensors: bool = False) -> None:
        self.index = index
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
