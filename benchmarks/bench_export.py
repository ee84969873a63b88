"""Export benchmark (issue 2): a DeiT-Ti/S/B-sized SN-Net v1 family with random weights, 71 stitches.

Prints, from one run (ratios, since this machine is shared and noisy):
  size   bytes on disk of all exported stitches / bytes of the unique fp32 parameters   (goal <= 1.05)
  time   export + validate all stitches / plain torch.onnx.export of the three anchors (goal <= 3)
  speed  ONNX Runtime CPU latency of an exported pure-anchor stitch / the same anchor exported
         directly with torch.onnx.export from the plain ViT module                       (goal <= 1.0)

    python benchmarks/bench_export.py [--small] [--stitches all] [--out DIR]
--small uses a quarter-width family (fast smoke run); the README quotes the full-size run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esta_export.onnx_export import export_supernet  # noqa: E402
from esta_export.supernet import AnchorConfig, Supernet, SupernetSpec, load_supernet, save_supernet  # noqa: E402


def family(small: bool) -> SupernetSpec:
    div = 4 if small else 1
    anchors = tuple(AnchorConfig(n, w // div, 12, max(1, h // div)) for n, w, h in
                    (("Ti", 192, 3), ("S", 384, 6), ("B", 768, 12)))
    return SupernetSpec(anchors, "snnet_v1", space_params={"kernel_size": 2, "stride": 1, "nearest": True})


def direct_export(anchor: torch.nn.Module, path: Path) -> float:
    x = torch.randn(1, 3, 224, 224)
    t = time.perf_counter()
    torch.onnx.export(anchor, (x,), str(path), input_names=["pixels"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=17)
    return time.perf_counter() - t


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved_latency(sessions: dict[str, ort.InferenceSession], rounds: int = 30) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():                         # warm-up
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--stitches", default="all")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    model = Supernet(family(args.small)).eval()
    path = save_supernet(model, work / "family.safetensors")
    loaded = load_supernet(path)

    direct_s = sum(direct_export(loaded.model.anchors[a], work / f"direct_{a}.onnx") for a in range(3))
    result = export_supernet(loaded, work / "export", stitches=args.stitches, fresh=True)
    s = result.summary
    assert not s["failed"], s["failed"]
    out = result.out_dir
    disk = sum((out / r["onnx"]).stat().st_size for r in s["stitches"]) + s["weights_bytes"]
    unique_params = sum(p.numel() for p in loaded.model.parameters()) * 4
    naive = sum(r["params"] for r in s["stitches"]) * 4

    lat = interleaved_latency({"stitch": session(out / "stitch_001.onnx"), "direct": session(work / "direct_1.onnx")})
    report = {
        "family": "DeiT-Ti/S/B/4 (small)" if args.small else "DeiT-Ti/S/B", "stitches": len(s["stitches"]),
        "size_ratio": disk / unique_params, "naive_size_ratio": naive / unique_params,
        "export_validate_s": result.seconds, "direct_export_3_anchors_s": direct_s,
        "time_ratio": result.seconds / direct_s,
        "latency_stitch_ms": lat["stitch"] * 1e3, "latency_direct_ms": lat["direct"] * 1e3,
        "latency_ratio": lat["stitch"] / lat["direct"],
    }
    print(json.dumps(report, indent=2))
    print(f"size   {report['size_ratio']:.3f}  (naive per-stitch export {report['naive_size_ratio']:.1f}; goal <= 1.05)")
    print(f"time   {report['time_ratio']:.2f}  ({result.seconds:.1f} s for {len(s['stitches'])} stitches vs "
          f"{direct_s:.1f} s for 3 anchors; goal <= 3)")
    print(f"speed  {report['latency_ratio']:.2f}  (DeiT-S stitch {report['latency_stitch_ms']:.2f} ms vs direct "
          f"{report['latency_direct_ms']:.2f} ms, ORT CPU batch 1; goal <= 1.0)")


if __name__ == "__main__":
    main()
