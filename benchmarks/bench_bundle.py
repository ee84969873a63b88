"""Bundle and runtime figures, as ratios from one run.

    python benchmarks/bench_bundle.py [PATH] [--target cpu] [--json]

PATH is a bundle folder (has manifest.json), a main-job folder (export/ + compiled/<target>/), or
an export folder (export.json; its ONNX graphs are bundled as the cpu artifacts). Without PATH a
ViT-sized family (two anchors of width 192 and 384, 6 blocks, 224x224 input) is built in a
temporary folder.

Figures (goals from the bundle issue):
- memory:    resident memory with every bundled stitch loaded / with only the largest loaded
             (goal <= 1.3). Each side runs in a fresh process; the process baseline (Python, numpy,
             ONNX Runtime) is in both, and reported, as is the floor this family allows
             (unique weight bytes / the largest stitch's weight bytes).
- switching: time to switch between two loaded stitches / one inference of the smaller (<= 0.1).
- size:      bundle bytes / unique bytes of the weights it holds (<= 1.05).
Also: inference latency with shared weights (ONNX Runtime prepacking off) / with private weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:   # the test fixtures (tests/fixtures/) build the demo family
    sys.path.insert(0, str(ROOT / "tests"))

_MEMORY_CHILD = r"""
import json, sys, numpy as np
sys.path.insert(0, sys.argv[1])
from esta_runtime import Bundle
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
import onnxruntime
bundle = Bundle.open(sys.argv[1], verify=False, share_weights=sys.argv[3] == "1")
base = rss()
ids = json.loads(sys.argv[2])
shape = [1] + [int(d) for d in bundle.input_spec["shape"][1:]]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for sid in ids:
    bundle.run(x, stitch_id=sid)
print(json.dumps({"base": base, "rss": rss()}))
"""


def _resolve(path: Path | None, target: str, work: Path) -> Path:
    from esta_export.bundle.writer import write_bundle

    if path is None:
        from fixtures.family import FamilySpec, make_family

        print("building a ViT-sized test family (widths 192/384, depth 6, 224x224) ...", file=sys.stderr)
        job = make_family(work / "job", FamilySpec(widths=(192, 384), depth=6, image_size=224, patch=16,
                                                   num_classes=1000))
        return write_bundle(job, "cpu", work / "bundle")
    if (path / "manifest.json").is_file():
        return path
    if (path / "compiled" / target / "compile.json").is_file():
        return write_bundle(path, target, work / "bundle")
    if (path / "export.json").is_file():
        return write_bundle(None, "cpu", work / "bundle", export_dir=path,
                            compiled_dir=_compiled_from_export(path, work / "compiled"))
    raise SystemExit(f"bench_bundle: {path} is not a bundle, job or export folder")


def _compiled_from_export(export_dir: Path, out: Path) -> Path:
    """A compile.json whose cpu artifacts are the export's graphs as they are (validated at export)."""
    import os

    from esta_export.fsutil import sha256_file

    export = json.loads((export_dir / "export.json").read_text())
    out.mkdir(parents=True)
    arts = []
    for s in export["stitches"]:
        rel = os.path.relpath(export_dir / s["onnx"], out)
        arts.append({"id": s["id"], "route": s["route"], "path": rel, "sha256": sha256_file(export_dir / s["onnx"]),
                     "files": {}, "validation": {"passed": True, "note": "export-stage validation",
                                                 "max_abs_error": s.get("max_abs_error")}})
    import onnxruntime

    (out / "compile.json").write_text(json.dumps({
        "target": "cpu", "backend": "onnxruntime", "precision": "fp32",
        "runtime": {"onnxruntime": onnxruntime.__version__}, "verified_on_hardware": False,
        "engines_built": True, "device_build_required": False, "artifacts": arts, "failed": []}))
    return out


def _memory(bundle: Path, ids: list[int], share: bool) -> dict:
    out = subprocess.run([sys.executable, "-I", "-c", _MEMORY_CHILD, str(bundle), json.dumps(ids),
                          "1" if share else "0"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_ms(fn, n: int) -> float:
    import numpy as np

    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", nargs="?", type=Path)
    p.add_argument("--target", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench_bundle.") as tmp:
        bundle = _resolve(args.path, args.target, Path(tmp))
        sys.path.insert(0, str(bundle))
        from esta_runtime import Bundle  # the bundled copy: what a device runs

        m = json.loads((bundle / "manifest.json").read_text())
        index = json.loads((bundle / m["weights"]["index"]).read_text())
        weight_bytes = {sid: sum(index["tensors"][i]["length"] for i in set(names.values()))
                        for sid, names in index["stitches"].items()}
        ids = [int(s["id"]) for s in m["stitches"]]
        largest = max(ids, key=lambda i: weight_bytes[str(i)])

        one = _memory(bundle, [largest], share=True)
        every = _memory(bundle, ids, share=True)
        every_private = _memory(bundle, ids, share=False)
        unique = m["weights"]["unique_bytes"]

        b = Bundle.open(bundle, verify=False)
        two = sorted(ids, key=lambda i: weight_bytes[str(i)])[:2]
        small = two[0]
        for sid in two:
            b.load(sid)
        shape = [1] + [int(d) for d in m["input"]["shape"][1:]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        b.activate(small)
        for _ in range(5):
            b.run(x)
        infer_ms = _median_ms(lambda: b.run(x), 50)
        state = {"i": 0}

        def switch():
            state["i"] ^= 1
            b.activate(two[state["i"]])

        switch_ms = _median_ms(switch, 2000)

        private = Bundle.open(bundle, verify=False, share_weights=False)
        for bb in (b, private):
            for _ in range(3):
                bb.run(x, stitch_id=largest)
        rounds_shared, rounds_private = [], []
        for _ in range(20):  # interleaved, so drift hits both alike
            rounds_shared.append(_median_ms(lambda: b.run(x, stitch_id=largest), 1))
            rounds_private.append(_median_ms(lambda: private.run(x, stitch_id=largest), 1))
        shared_ms, private_ms = float(np.median(rounds_shared)), float(np.median(rounds_private))

        bundle_bytes = sum(f["size"] for f in m["files"]) + (bundle / "manifest.json").stat().st_size
        res = {
            "bundle": str(args.path or "built ViT-sized test family"), "stitches": len(ids),
            "largest_stitch": largest, "unique_weight_bytes": unique,
            "memory_ratio": every["rss"] / one["rss"],
            "memory_rss_all_mb": every["rss"] / 1e6, "memory_rss_largest_mb": one["rss"] / 1e6,
            "memory_process_baseline_mb": one["base"] / 1e6,
            "memory_ratio_above_baseline": (every["rss"] - every["base"]) / max(1, one["rss"] - one["base"]),
            "memory_floor_unique_over_largest": unique / weight_bytes[str(largest)],
            "memory_ratio_private_weights": every_private["rss"] / one["rss"],
            "switch_ratio": switch_ms / infer_ms, "switch_us": switch_ms * 1e3,
            "inference_smaller_ms": infer_ms, "switched_between": two,
            "size_ratio": bundle_bytes / unique, "bundle_bytes": bundle_bytes,
            "latency_shared_over_private": shared_ms / private_ms,
            "latency_largest_shared_ms": shared_ms, "latency_largest_private_ms": private_ms,
        }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"bundle: {res['bundle']} ({res['stitches']} stitches, {unique / 1e6:.1f} MB unique weights)")
    print(f"memory    all loaded / largest only: {res['memory_ratio']:.3f} (goal <= 1.3)  "
          f"[{res['memory_rss_all_mb']:.0f} MB / {res['memory_rss_largest_mb']:.0f} MB RSS; above the "
          f"{res['memory_process_baseline_mb']:.0f} MB process baseline: {res['memory_ratio_above_baseline']:.3f}; "
          f"floor for this family {res['memory_floor_unique_over_largest']:.3f}; private weights: "
          f"{res['memory_ratio_private_weights']:.3f}]")
    print(f"switching switch / inference of the smaller: {res['switch_ratio']:.5f} (goal <= 0.1)  "
          f"[{res['switch_us']:.1f} us / {res['inference_smaller_ms']:.3f} ms]")
    print(f"size      bundle bytes / unique weight bytes: {res['size_ratio']:.4f} (goal <= 1.05)")
    print(f"latency   shared weights / private weights (largest stitch): "
          f"{res['latency_shared_over_private']:.3f}  [{shared_ms:.3f} ms / {private_ms:.3f} ms; prepacking off "
          f"when shared]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
