"""The device loop for targets whose engines are built on the device (TensorRT): records that the
bundle's on-device profiler writes must find their way back to the compiled artifacts, so that
`esta-export select` can choose by the device's measured latency. No TensorRT runs here: the
records below are the profiler's record format, keyed exactly as runtime/profiler.py keys them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esta_export.profiling.store import ProfileStore
from esta_export.select import select_compiled

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "digits-esta.safetensors"


@pytest.mark.slow
def test_device_profile_records_match_compiled_artifacts(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "jo"
    proc = subprocess.run([sys.executable, "-m", "esta_export", str(DEMO), "--target", "jetson-orin", "--out", str(out),
                           "--stitches", "0,1,2,32,34", "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "engines NOT built" in proc.stderr and "Not verified on hardware" in proc.stderr
    comp = json.loads((out / "compiled/jetson-orin/compile.json").read_text())
    assert comp["device_build_required"] and all(a["sha256"] is None and a["source_sha256"] for a in comp["artifacts"])
    manifest = json.loads((out / "bundle/jetson-orin/manifest.json").read_text())
    by_id = {a["id"]: a["source_sha256"] for a in comp["artifacts"]}
    records = []
    for n, s in enumerate(manifest["stitches"]):
        # What runtime/profiler.py writes on the device: artifact_sha256 = the manifest's compiled key.
        assert s["artifact"]["compiled_sha256"] == by_id[s["id"]]
        lat = 1.0 + n
        records.append({"schema": "esta-export/profile", "schema_version": "1.0", "stitch_id": s["id"],
                        "route": s["route"], "artifact_sha256": s["artifact"]["compiled_sha256"],
                        "target": "jetson-orin", "backend": "tensorrt", "precision": "fp16", "batch": 1,
                        "input_shape": [1, 3, 32, 32], "threads": None, "unstable": False,
                        "latency_ms": {k: lat for k in ("min", "mean", "median", "p90", "p95", "p99")} |
                                      {"std": 0.0, "cv": 0.0, "n": 50, "seconds": 2.0},
                        "env": {"runtime": "tensorrt"}, "env_hash": "device", "measured": True,
                        "time": "2026-11-22T00:00:00+00:00"})
    store = out / "profiles/jetson-orin.jsonl"
    ProfileStore(store).append(records)
    sel = select_compiled(out / "compiled/jetson-orin", "jetson-orin", store, out_path=out / "select/jetson-orin.json")
    assert {s["latency_source"] for s in sel["stitches"]} == {"measured"}
    assert sel["front"] and any("not verified on hardware" in w for w in sel["warnings"])
