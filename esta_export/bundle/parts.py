"""What a backend's bundling hooks work with: the bundle being written and the pieces every
backend shares (ONNX graphs re-pointed into one weights file, files copied as compiled, the
compile stage's reference inputs).

The bundle writer (writer.py) is backend-neutral: it asks the compiled folder's backend (its
``Backend.bundle_*`` hooks, esta_export/backends/<name>.py) how each artifact goes into the bundle
and how the bundled copy is checked. Every backend starts from an ONNX graph, so the default
hooks bundle that graph; a backend with another artifact format overrides them in its own file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from .repack import WeightPacker

MAX_REFERENCE_BYTES = 8 << 20  # reference inputs shipped for on-device validation
MIN_REFERENCE_SAMPLES = 8


@dataclass
class BundleParts:
    """The bundle in the making (``root``, its ``models/`` folder and shared ONNX weights
    ``packer``) and what it is made from (compile.json, its folder, the stitches included)."""

    root: Path
    compiled: dict[str, Any]
    compiled_dir: Path
    input_spec: dict[str, Any]
    include: list[int]
    packer: WeightPacker
    # A backend's own state across its hooks (e.g. OpenVINO's shared IR weights packer).
    state: dict[str, Any] = field(default_factory=dict)
    _reference: Any = field(default=None, repr=False)
    _reference_read: bool = field(default=False, repr=False)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def target_spec(self) -> dict[str, Any]:
        return self.compiled.get("target_spec") or {}

    def reference(self) -> dict[str, Any] | None:
        """The compile stage's reference inputs and fp32 outputs (reference.npz), read once."""
        if not self._reference_read:
            self._reference = read_reference(self.compiled, self.compiled_dir)
            self._reference_read = True
        return self._reference

    def onnx_source(self, art: dict[str, Any]) -> str | None:
        """The ONNX graph of an artifact: the artifact itself, or the graph among its files
        (a device engine is built from it)."""
        if art["path"].endswith(".onnx"):
            return art["path"]
        return next((f for f in (art.get("files") or {}) if f.endswith(".onnx")), None)

    def add_onnx_graph(self, sid: int, onnx_rel: str, art: dict[str, Any]) -> dict[str, Any]:
        """``models/stitch_<id>.onnx`` with its initializers in the shared ``weights.bin``."""
        import onnx

        model = onnx.load(str(self.compiled_dir / onnx_rel), load_external_data=True)
        self.packer.add_model(sid, model)
        rel = f"models/stitch_{sid:03d}.onnx"
        onnx.save_model(model, str(self.root / rel))
        return {"format": "onnx", "path": rel,
                "compiled_sha256": art.get("sha256") or art.get("source_sha256"), "source": onnx_rel}

    def copy_as_compiled(self, sid: int, art: dict[str, Any], fmt: str) -> dict[str, Any]:
        """``models/stitch_<id>/`` holding the artifact's files as compile wrote them."""
        rel_dir = f"models/stitch_{sid:03d}"
        for relf in art.get("files") or {art["path"]: None}:
            (self.root / rel_dir / relf).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.compiled_dir / relf, self.root / rel_dir / relf)
        return {"format": fmt, "path": f"{rel_dir}/{art['path']}",
                "compiled_sha256": art.get("sha256") or art.get("source_sha256")}

    def check_onnx_graph(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The repacked graph must give exactly what the compiled one gave (and say how far both
        are from the fp32 reference the artifact was validated against). ONNX graphs are checked
        with ONNX Runtime, the runtime every bundle can fall back to."""
        import numpy as np
        import onnxruntime as ort

        art, sid, spec = entry["artifact"], entry["id"], self.input_spec
        original, repacked = self.compiled_dir / art["source"], self.root / art["path"]
        reference = self.reference()
        name = spec.get("name", "pixels")
        if reference is not None and "x" in reference:
            x, what = reference["x"].astype(np.float32), f"compile reference inputs ({len(reference['x'])})"
        else:
            shape = [1 if not isinstance(d, int) else d for d in spec.get("shape", [1, 3, 224, 224])]
            x, what = np.random.default_rng(0).standard_normal(shape).astype(np.float32), "standard normal, seed 0"
        outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
                for p in (original, repacked)]
        return compare_outputs(outs[0], outs[1], repacked, reference, sid,
                               {"input": what, "runtime": f"onnxruntime {ort.__version__}"})

    def write_device_reference(self) -> str | None:
        return write_device_reference(self.root, self.compiled, self.compiled_dir, self.include)


def compare_outputs(compiled_out, bundled_out, bundled: Path, reference: dict | None, sid: int,
                    how: dict[str, Any]) -> dict[str, Any]:
    """The ``bundle_check`` of one stitch: bundled vs compiled outputs must agree to 1e-6 (else
    a writer bug, refused), and the bundled copy's distance from the fp32 reference."""
    import numpy as np

    diff = float(np.max(np.abs(compiled_out - bundled_out)))
    if diff > 1e-6:
        raise BundleError(f"bundled {'IR' if bundled.suffix == '.xml' else 'graph'} {bundled.name} "
                          f"differs from its compiled artifact by {diff:.3g}",
                          hint="this is a bug in the bundle writer; please report it")
    check = {"max_abs_diff_vs_compiled": diff, **how}
    ref = None if reference is None else reference.get(f"ref_{sid}")
    if ref is not None:
        check["max_abs_error_vs_reference"] = float(np.max(np.abs(bundled_out - ref)))
    return check


def read_reference(compiled: dict, compiled_dir: Path) -> dict[str, Any] | None:
    """The compile stage's reference inputs and fp32 outputs (reference.npz), if it wrote them."""
    import numpy as np

    rel = compiled.get("reference")
    if not rel or not (compiled_dir / rel).is_file():
        return None
    with np.load(compiled_dir / rel, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_device_reference(root: Path, compiled: dict, compiled_dir: Path, ids: list[int]) -> str | None:
    """``reference.npz`` for on-device validation: the compile stage's reference inputs ``x``
    (and labels ``y``) and the fp32 logits ``ref_<id>`` of the bundled stitches, at most
    MAX_REFERENCE_BYTES of inputs (never fewer than MIN_REFERENCE_SAMPLES samples)."""
    import numpy as np

    ref = read_reference(compiled, compiled_dir)
    if ref is None or "x" not in ref:
        return None
    x = ref["x"]
    per = max(1, x[:1].nbytes)
    n = min(len(x), max(MIN_REFERENCE_SAMPLES, MAX_REFERENCE_BYTES // per))
    arrays = {"x": x[:n]}
    if "y" in ref:
        arrays["y"] = ref["y"][:n]
    arrays.update({f"ref_{sid}": ref[f"ref_{sid}"][:n] for sid in ids if f"ref_{sid}" in ref})
    from ..fsutil import atomic_path

    with atomic_path(root / "reference.npz", suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return "reference.npz"
