"""``build_engines.py``: build the engines a device build kit lists, on the device, and validate them.

    python3 build_engines.py kit.json            # build every engine listed in kit.json
    python3 build_engines.py kit.json --check    # only check existing plans against this device
    python3 build_engines.py kit.json --fresh    # rebuild even matching plans

The kit's ``build_engines.py`` is a launcher for this module (``esta_runtime/tensorrt/`` ships
next to it, in the compile folder's kit and in the bundle); it needs TensorRT's Python bindings,
cuda-python and numpy, nothing else. After building (or finding) each engine it runs it on the
kit's reference inputs and gates it against the fp32 logits (:mod:`.validation`); a
weight-stripped engine is refitted from the shared weights first, and rebuilt with full weights
when that refit fails (said in its build record and in ``validation.json``). An engine that fails
is reported, marked failed and refused by the bundle runtime and its profiler.
NOT verified on hardware.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..gates import describe_failure
from ..integrity import sha256_file
from .build import atomic_write, build_engine
from .device import engine_key, fingerprint, stale_fields
from .validation import REFERENCE, VALIDATION, kit_thresholds, load_reference, record_validation, validate_engine

_VERDICT_FIELDS = ("passed", "metric", "value", "threshold", "cosine_min", "top1_agreement",
                   "rel_error", "accuracy_drop", "samples", "reason", "weights", "refit")


def _build_and_validate(plan: dict, root: Path, reference, thresholds, row: dict) -> dict | None:
    """Build one engine and validate it; a stripped engine that cannot be refitted is rebuilt
    with full weights. Returns the verdict, or None when the build failed (row says why)."""
    engine = root / plan["engine"]
    try:
        meta = build_engine(plan, root)
    except RuntimeError as err:
        print(f"FAILED {plan['engine']}: {err}", file=sys.stderr)
        row.update(status="build failed", reason=str(err))
        return None
    verdict = validate_engine(plan, root, reference, thresholds, meta)
    if meta.get("weights") == "stripped" and verdict.get("metric") == "run" and "refit" in str(
            verdict.get("reason")):
        reason = f"weight-stripped engine could not be refitted ({verdict['reason']}): full engine"
        print(f"{plan['engine']}: {reason}", file=sys.stderr)
        try:
            meta = build_engine(plan, root, weights="full")
        except RuntimeError as err:
            row.update(status="build failed", reason=str(err))
            return None
        meta["weights_fallback"] = reason
        atomic_write(Path(str(engine) + ".json"), json.dumps(meta, indent=2).encode())
        verdict = validate_engine(plan, root, reference, thresholds, meta)
    row["weights"] = meta.get("weights")
    if meta.get("weights_fallback"):
        row["weights_fallback"] = meta["weights_fallback"]
    return verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the TensorRT engines listed in kit.json, "
                                             "on the device they will run on, and validate them "
                                             "against the fp32 reference.")
    ap.add_argument("kit", nargs="?", default="kit.json")
    ap.add_argument("--check", action="store_true",
                    help="only check (and re-validate) existing plans; build nothing")
    ap.add_argument("--fresh", action="store_true", help="rebuild even matching plans")
    args = ap.parse_args(argv)
    kit_path = Path(args.kit)
    try:
        kit = json.loads(kit_path.read_text())
        plans = kit["plans"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"cannot read the build kit {kit_path} ({err}); pass the kit.json of a compile "
              f"folder or bundle", file=sys.stderr)
        return 2
    root = kit_path.parent
    try:
        import tensorrt as trt
    except ImportError:
        print("TensorRT's Python bindings are missing: on Jetson `sudo apt install "
              "python3-libnvinfer` (system Python), elsewhere `pip install tensorrt`",
              file=sys.stderr)
        return 2
    planned = str(kit.get("tensorrt_planned") or "")
    if trt.__version__.split(".")[:2] != planned.split(".")[:2]:
        print(f"warning: kit planned for TensorRT {planned}, this device has {trt.__version__}; "
              f"re-run `esta-export compile` with a target for this TensorRT version if the "
              f"build fails", file=sys.stderr)
    fp = fingerprint()
    reference = load_reference(root, kit)
    thresholds, th_source = kit_thresholds(root, kit)
    if reference is None:
        print(f"warning: no {REFERENCE} next to {kit_path.name}: engines cannot be validated and "
              f"will not be used; copy the compile folder's or bundle's {REFERENCE} here",
              file=sys.stderr)
    status, results = 0, []
    for plan in plans:
        engine = root / plan["engine"]
        meta_path = Path(str(engine) + ".json")
        current = engine_key(plan, sha256_file(root / plan["onnx"]), fp)
        row = {"id": plan.get("id"), "engine": plan["engine"], "precision": plan["precision"],
               "weights_planned": plan.get("weights", "full")}
        results.append(row)
        have = engine.exists() and meta_path.exists()
        meta = json.loads(meta_path.read_text()) if have else None
        stale = stale_fields(meta["key"], current) if have else None
        if have and not stale and not args.fresh:
            print(f"found {plan['engine']} (matches this device)")
            verdict = validate_engine(plan, root, reference, thresholds, meta)
            row["weights"] = meta.get("weights", "full")
        elif args.check:
            row["status"] = "not built" if not have else "stale"
            if stale:
                row["differs_in"] = stale
            print(f"{plan['engine']}: " + ("not built" if not have else
                  f"built for another setup (differs in: {', '.join(stale)})"), file=sys.stderr)
            status = 1
            continue
        else:
            if stale:
                print(f"{plan['engine']} was built for another setup (differs in: "
                      f"{', '.join(stale)}): rebuilding", file=sys.stderr)
            verdict = _build_and_validate(plan, root, reference, thresholds, row)
            if verdict is None:
                status = 1
                continue
        record_validation(engine, verdict)
        row["validation"] = {k: verdict.get(k) for k in _VERDICT_FIELDS if k in verdict}
        if verdict.get("passed") is True:
            row["status"] = "ok"
            print(f"ok {plan['engine']}: {verdict['metric']} = {verdict['value']:.6g} "
                  f"(threshold {verdict['threshold']:.6g})")
        else:
            row["status"] = "failed validation" if verdict.get("passed") is False else "not validated"
            print(f"FAILED {plan['engine']}: {describe_failure(verdict)}; it will not be used",
                  file=sys.stderr)
            status = 1
    summary = {"schema": "esta-export/trt-validation", "schema_version": "1.1",
               "target": kit.get("target"), "device": fp, "mode": "check" if args.check else "build",
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "thresholds": thresholds,
               "thresholds_source": th_source,
               "reference": None if reference is None else {
                   "path": reference["path"], "sha256": reference["sha256"],
                   "samples": int(len(reference["x"])), "labelled": reference["y"] is not None},
               "ok": sum(r.get("status") == "ok" for r in results),
               "failed": sum(r.get("status") != "ok" for r in results),
               "stripped": sum(r.get("weights") == "stripped" for r in results), "engines": results}
    atomic_write(root / VALIDATION, json.dumps(summary, indent=2).encode())
    print(f"{summary['ok']} engines valid, {summary['failed']} not ({summary['stripped']} "
          f"weight-stripped); details in {VALIDATION}")
    return status
