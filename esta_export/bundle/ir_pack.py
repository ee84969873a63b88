"""Store the weights of several OpenVINO IRs once: one shared ``.bin`` that every ``.xml`` points into.

An IR is a graph (``model.xml``) whose ``Const`` layers name a byte range (``offset``, ``size``) of
its weights file (``model.bin``); OpenVINO reads any weights file given to ``core.read_model(xml,
bin)``. Each Const's bytes are hashed (with its element type and shape); the first time a hash is
seen they are appended to the shared file (64-byte aligned), and every IR's Const is re-pointed at
that one copy. Stitches of one family share most anchor weights, so their IRs share most bytes;
what NNCF or fp16 compression made different per stitch stays per stitch. The bundle writer
checks that each rewritten IR computes exactly what the compiled one did.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

from ..errors import BundleError

ALIGN = 64


class IrPacker:
    def __init__(self, bin_path: Path) -> None:
        self.bin_path = bin_path
        self._f = open(bin_path, "wb")
        self._by_hash: dict[str, int] = {}
        self.consts = 0
        self.per_stitch_bytes: dict[int, int] = {}  # what each IR's own .bin held

    def add_ir(self, stitch_id: int, xml_src: Path, bin_src: Path, xml_dst: Path) -> None:
        """Write ``xml_dst``: ``xml_src`` with its Consts re-pointed into the shared file."""
        try:
            tree = ET.parse(xml_src)
        except ET.ParseError as err:
            raise BundleError(f"compiled IR {xml_src} is not valid XML ({err})",
                              hint="re-run esta-export compile --fresh") from None
        data = bin_src.read_bytes() if bin_src.is_file() else b""
        self.per_stitch_bytes[int(stitch_id)] = len(data)
        for layer in tree.getroot().iter("layer"):
            if layer.get("type") != "Const":
                continue
            d = layer.find("data")
            if d is None or d.get("offset") is None or d.get("size") is None:
                continue
            off, size = int(d.get("offset")), int(d.get("size"))
            if off < 0 or size < 0 or off + size > len(data):
                raise BundleError(f"compiled IR {xml_src.name}: Const {layer.get('name')!r} points past "
                                  f"the end of {bin_src.name}", hint="re-run esta-export compile --fresh")
            raw = data[off:off + size]
            key = hashlib.sha256(f"{d.get('element_type')}|{d.get('shape')}|".encode() + raw).hexdigest()
            if key not in self._by_hash:
                pos = self._f.tell()
                pad = (-pos) % ALIGN if size >= ALIGN else 0  # scales and scalars stay packed
                if pad:
                    self._f.write(b"\0" * pad)
                    pos += pad
                self._f.write(raw)
                self._by_hash[key] = pos
            d.set("offset", str(self._by_hash[key]))
            self.consts += 1
        tree.write(xml_dst, encoding="utf-8", xml_declaration=True)

    @property
    def unique_bytes(self) -> int:
        return self._f.tell() if not self._f.closed else self.bin_path.stat().st_size

    def close(self) -> dict:
        self._f.close()
        return {"unique_bytes": self.bin_path.stat().st_size, "consts": self.consts,
                "unique_consts": len(self._by_hash),
                "per_stitch_bytes": {str(k): v for k, v in sorted(self.per_stitch_bytes.items())}}
