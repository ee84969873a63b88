"""Store the weights of several ONNX graphs once: one ``weights.bin``, deduped by content.

Artifacts arrive with one shared external-data file, one file per graph, or weights embedded in
the graph. Each initializer above a few bytes is hashed (dtype, shape, bytes); the first time a
hash is seen its bytes are appended (64-byte aligned, so numpy views and SIMD loads are aligned),
and every graph's tensor is pointed at that one copy. The index (which name of which stitch is
which unique tensor) lets the runtime share them in memory too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

ALIGN = 64
MIN_EXTERNAL_BYTES = 128  # shape constants and scalars stay in the graph (ORT folds them)


class WeightPacker:
    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self._f = open(data_path, "wb")
        self._by_hash: dict[str, int] = {}
        self.tensors: list[dict] = []
        self.stitches: dict[str, dict[str, int]] = {}

    def add_model(self, stitch_id: int, model) -> None:
        """Move ``model``'s initializers into the shared file (in place); record the name map."""
        from onnx import numpy_helper

        names: dict[str, int] = {}
        for tensor in model.graph.initializer:
            arr = np.ascontiguousarray(numpy_helper.to_array(tensor))
            if arr.nbytes < MIN_EXTERNAL_BYTES or arr.dtype == object:
                continue
            raw = arr.tobytes()
            key = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + raw).hexdigest()
            if key not in self._by_hash:
                self._f.write(b"\0" * ((-self._f.tell()) % ALIGN))
                self._by_hash[key] = len(self.tensors)
                self.tensors.append({"offset": self._f.tell(), "length": len(raw), "dtype": arr.dtype.str,
                                     "shape": list(arr.shape), "sha256": key})
                self._f.write(raw)
            index = self._by_hash[key]
            names[tensor.name] = index
            entry = self.tensors[index]
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                          "uint64_data", "string_data"):
                tensor.ClearField(field)
            tensor.data_location = 1  # TensorProto.EXTERNAL
            del tensor.external_data[:]
            for k, v in (("location", self.data_path.name), ("offset", str(entry["offset"])),
                         ("length", str(entry["length"]))):
                e = tensor.external_data.add()
                e.key, e.value = k, v
        self.stitches[str(stitch_id)] = names

    def close(self) -> dict:
        self._f.close()
        return {"file": self.data_path.name, "alignment": ALIGN, "tensors": self.tensors,
                "stitches": self.stitches}

    @property
    def unique_bytes(self) -> int:
        return int(sum(t["length"] for t in self.tensors))
