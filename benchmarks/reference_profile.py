"""Re-make the reference demo profile (profiles/) and docs/pareto.png with the current protocol.

    python benchmarks/reference_profile.py [--supernet S] [--val-data V] [--name cpu-<machine>-<family>]

Runs the main job (``--target cpu``: session settings tuned on this machine, the one timing
protocol, medians with 95% intervals) into a work folder, copies its profile store to
``profiles/<name>.jsonl`` unchanged, and draws ``docs/pareto.png`` from its selection (intervals,
ties, the FLOPs front). Prints the load average: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--supernet", type=Path, default=None, help="default: the .safetensors in examples/demo")
    ap.add_argument("--val-data", type=Path, default=None, help="default: the .npz in examples/demo")
    ap.add_argument("--name", default=None, help="profiles/<name>.jsonl (default: cpu-<cpu>-<n>core-<family>)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--stitches", default=None, help="a subset (e.g. 0,5,10-12); default all")
    args = ap.parse_args()
    demo = ROOT / "examples" / "demo"
    supernet = args.supernet or next(demo.glob("*.safetensors"))
    val = args.val_data or next(demo.glob("*.npz"), None)
    work = args.out or Path(tempfile.mkdtemp(prefix="reference-profile-"))
    print(f"reference_profile: {supernet.name}; load average {os.getloadavg()}", flush=True)
    cmd = [sys.executable, "-m", "esta_export", str(supernet), "--target", "cpu", "--out", str(work), "--fresh"]
    if val is not None:
        cmd += ["--val-data", str(val)]
    if args.stitches:
        cmd += ["--stitches", args.stitches]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        return proc.returncode
    from esta_export.report.plots import pareto_plot
    from esta_export.runtime.environment import processor

    sel = json.loads((work / "select" / "cpu.json").read_text())
    cpu = (processor().get("model") or "cpu").split()
    # "Intel(R) Xeon(R) Processor" -> "intel-xeon"; "AMD EPYC 9B14 ..." -> "amd-epyc"
    words = [re.sub(r"\((R|TM|tm|r)\)", "", w) for w in cpu[:2]]
    tag = "-".join(w.lower() for w in words if w.isalnum()) or "cpu"
    name = args.name or f"cpu-{tag}-{os.cpu_count()}core-{supernet.stem}"
    dst = ROOT / "profiles" / f"{name}.jsonl"
    shutil.copyfile(work / "profiles" / "cpu.jsonl", dst)
    (ROOT / "docs" / "pareto.png").write_bytes(pareto_plot(sel))
    recs = [json.loads(line) for line in dst.read_text().splitlines() if line.strip()]
    stable = sum(r["latency_ms"]["robust_cv"] < 0.05 for r in recs)
    lat = sorted(r["latency_ms"]["median"] for r in recs)
    print(f"wrote {dst.relative_to(ROOT)} ({len(recs)} records, {stable} with robust CV < 5%, median "
          f"{lat[0]:.3f}..{lat[-1]:.3f} ms, span {lat[-1] / lat[0]:.1f}x) and docs/pareto.png; front "
          f"{sel['front']} (ties {sel.get('front_ties')}); load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
