"""TensorRT bundle size, a DESIGN FIGURE (no TensorRT here, nothing measured on a board): weight
bytes a jetson-orin bundle stores per unique weight byte of the family, with weight-stripped
engines (one shared weights file, refitted at load) versus full engines (each plan carries its
stitch's weights, at the engine precision: fp16 = 2 bytes per weight).

    python benchmarks/bench_trt_bundle.py

Plans also hold kernels and metadata (not counted: unknown until a board builds them).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test family's factory (tests/fixtures)


def main() -> int:
    from fixtures.family import make_family
    from esta_export.bundle.writer import write_bundle
    from esta_export.compile import compile_export

    with tempfile.TemporaryDirectory() as tmp:
        job = make_family(Path(tmp) / "job", with_selection=False)
        compile_export(job / "export", "jetson-orin", job / "compiled" / "jetson-orin")
        b = write_bundle(job, "jetson-orin", Path(tmp) / "bundle")
        m = json.loads((b / "manifest.json").read_text())
        index = json.loads((b / "models" / "weights.json").read_text())
        unique = sum(t["length"] for t in index["tensors"])
        per_stitch_fp32 = {sid: sum(index["tensors"][i]["length"] for i in set(names.values()))
                           for sid, names in index["stitches"].items()}
        modes = {e["weights"] for e in m["target"]["tensorrt"]["engines"].values()}
    k = len(per_stitch_fp32)
    full = unique + sum(v // 2 for v in per_stitch_fp32.values())  # shared file (ONNX fallback) + fp16 plans
    stripped = unique
    print(f"{k} stitches, engines planned {sorted(modes)}; unique weights {unique} B")
    print(f"weight bytes stored / unique weight bytes: stripped engines {stripped / unique:.2f}, "
          f"full fp16 engines {full / unique:.2f} (DESIGN FIGURE, not measured on a board)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
