#!/usr/bin/env python3
"""Run every stitch of a bundle on fixed inputs with the bundle's own runtime, or compare two runs.

Used by check_aarch64.sh on the host and inside the emulated arm64 root: it needs only numpy and
the bundle's runtime (esta_runtime next to the manifest), like the device.

    aarch64_logits.py BUNDLE OUT.npz                 logits of every stitch on 8 seeded inputs
    aarch64_logits.py --compare HOST.npz ARM.npz --bundle BUNDLE [--result R.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np


def run(bundle_dir: Path, out: Path) -> None:
    sys.path.insert(0, str(bundle_dir))
    from esta_runtime import Bundle

    bundle = Bundle.open(bundle_dir)
    size = bundle.input_spec["image_size"]
    images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    x = np.concatenate([bundle.preprocess(im) for im in images])
    logits = {}
    for s in bundle.stitches():
        bundle.activate(s.id)
        logits[f"stitch_{s.id}"] = np.concatenate([bundle.run(x[i:i + 1]) for i in range(len(x))])
    np.savez(out, machine=np.array(platform.machine()), **logits)
    print(f"{platform.machine()}: {len(logits)} stitches on {bundle.engine}, logits -> {out}")


def compare(host: Path, arm: Path, bundle_dir: Path, result: Path | None) -> int:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    precision = manifest["target"].get("precision", "fp32")
    a, b = np.load(host), np.load(arm)
    rows, ok = [], True
    for key in sorted(k for k in a.files if k.startswith("stitch_")):
        ref, got = a[key].astype(np.float64), b[key].astype(np.float64)
        rel = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
        agree = float(np.mean(np.argmax(got, 1) == np.argmax(ref, 1)))
        passed = rel <= 1e-4 if precision == "fp32" else agree >= 0.9
        ok &= passed
        rows.append({"stitch": key, "max_rel_error": rel, "top1_agreement": agree, "passed": passed})
        print(f"  {key}: max rel err {rel:.2e}, top-1 agreement {agree:.2f} -> {'ok' if passed else 'FAIL'}")
    summary = {"host": str(a["machine"]), "emulated": str(b["machine"]), "emulator": "qemu-user (QEMU_CPU=cortex-a76)",
               "precision": precision, "target": manifest["target"]["name"],
               "gate": "max rel err <= 1e-4" if precision == "fp32" else "top-1 agreement >= 0.9",
               "stitches": rows, "passed": ok,
               "note": "functional check under emulation; no latency is measured or implied"}
    if result is not None:
        result.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{manifest['target']['name']} ({precision}) on emulated aarch64: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("paths", nargs=2, type=Path)
    p.add_argument("--compare", action="store_true")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--result", type=Path)
    a = p.parse_args()
    if a.compare:
        return compare(a.paths[0], a.paths[1], a.bundle, a.result)
    run(*a.paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
