"""On-device latency profiler: times every bundled stitch with the runtime the app will use.

ONNX Runtime sessions for every bundle but TensorRT ones; for a TensorRT bundle (manifest target
backend "tensorrt") the engines ``build_engines.py`` built and validated on this device, through
the bundle's own ``TrtRunner`` (each timed call copies the input host->device and the logits
device->host: records say ``"transfers": "h2d+d2h included"``). A TensorRT bundle whose engines
are missing, stale or failed validation is refused (one line, exit status 2): timing ONNX Runtime
on a Jetson's CPU would publish numbers the app never sees. The TensorRT path is NOT verified on
hardware.

Protocol (TARGETS.md section 6): warm up each stitch by time AND count; then interleave the stitches
in rounds (A B C A B C ...) so machine drift hits all alike, until every stitch has at least
``runs`` timings AND ``seconds`` have passed; report min/mean/median/p90/p95/p99/std/cv and flag
unstable results (cv above a threshold). Each record carries the environment fingerprint and the
artifact's sha256. Prints one JSON object per line (``python3 profile_device.py --bundle .``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

UNSTABLE_CV = 0.10


def latency_stats(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    q = np.percentile(a, [50, 90, 95, 99])
    return {"min": float(a.min()), "mean": mean, "median": float(q[0]), "p90": float(q[1]),
            "p95": float(q[2]), "p99": float(q[3]), "max": float(a.max()), "std": std,
            "cv": std / mean if mean > 0 else 0.0, "runs": int(a.size)}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def environment(threads: int | None, providers: list[str] | None, runtimes: dict | None = None) -> dict:
    """Where the numbers came from (keys as esta_export.profiling.environment.fingerprint).

    ``runtimes``: name -> version of the inference runtime used (default: ONNX Runtime's).
    """
    if runtimes is None:
        import onnxruntime as ort

        runtimes = {"onnxruntime": ort.__version__}
    uname = platform.uname()
    cpu_model = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware")):
            cpu_model = line.split(":", 1)[1].strip()
            break
    osr = _read("/etc/os-release") or ""
    pretty = next((ln.split("=", 1)[1].strip('"') for ln in osr.splitlines() if ln.startswith("PRETTY_NAME=")), "")
    model, l4t = _read("/proc/device-tree/model"), _read("/etc/nv_tegra_release")
    return {
        "cpu_model": cpu_model, "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "threads": threads, "os": f"{uname.system} {pretty}".strip(), "kernel": uname.release,
        "machine": uname.machine, "python": platform.python_version(),
        "runtimes": {**runtimes, "numpy": np.__version__},
        "providers": providers, "hostname": socket.gethostname(),
        "jetson": {"model": model, "l4t": l4t} if l4t else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "profiler": "bundle profile_device.py",
    }


def _power_mode() -> dict | None:
    """Jetson power mode as ``nvpmodel -q`` prints it ("NV Power Mode: MAXN" then the id); None
    elsewhere. [unchecked on a device: the output format is read loosely]"""
    import shutil
    import subprocess

    if shutil.which("nvpmodel") is None:
        return None
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    name = next((ln.split(":", 1)[1].strip() for ln in lines if "power mode" in ln.lower()), None)
    mode_id = next((int(ln) for ln in lines if ln.isdigit()), None)
    return {"id": mode_id, "name": name, "raw": lines[:4]}


def _tensorrt_provenance(bundle, ids) -> dict:
    """What a TensorRT record must say: runtime version, GPU, engine key and validation verdict."""
    be = bundle._build_engines
    fp = be.device_fingerprint()
    per = {}
    for sid in ids:
        meta = bundle._engines[sid]["meta"]
        v = meta.get("validation") or {}
        per[sid] = {"engine_sha256": meta.get("plan_sha256"), "engine_key": meta.get("key"),
                    "precision": bundle._engines[sid]["plan"].get("precision"),
                    "max_batch": int(be.max_batch(bundle._engines[sid]["plan"])),
                    "validation": {k: v.get(k) for k in ("metric", "value", "threshold", "passed",
                                                         "samples", "validated")}}
    return {"fingerprint": fp, "stitches": per}


def profile(bundle, *, runs: int = 50, seconds: float = 2.0, warmup_runs: int = 10,
            warmup_seconds: float = 0.2, batch: int = 1, stitch_ids=None) -> list[dict]:
    from .errors import BundleError

    ids = [s.id for s in bundle.stitches()] if stitch_ids is None else [int(i) for i in stitch_ids]
    for sid in ids:
        bundle._entry(sid)  # unknown ids: one clear line
    shape = list(bundle.input_spec.get("shape") or [1, 3, 224, 224])
    shape[0] = batch
    x = np.random.default_rng(0).standard_normal([int(d) for d in shape]).astype(np.float32)
    tensorrt = getattr(bundle, "engine", "onnxruntime") == "tensorrt"
    trt_info = _tensorrt_provenance(bundle, ids) if tensorrt else None
    if tensorrt:
        limit = min(p["max_batch"] for p in trt_info["stitches"].values())
        if batch > limit:  # a larger batch would run in slices: not one inference any more
            raise BundleError(f"--batch {batch} exceeds the engines' optimization profile (max {limit})",
                              hint=f"use --batch {limit} or less, or re-compile with larger shapes")
    sessions = {sid: bundle.load(sid) for sid in ids}
    name = bundle.input_spec.get("name", "pixels")
    for sid, sess in sessions.items():  # warm-up: by count AND by time
        n, t0 = 0, time.perf_counter()
        while n < warmup_runs or time.perf_counter() - t0 < warmup_seconds:
            sess.run(None, {name: x})
            n += 1
    samples: dict[int, list[float]] = {sid: [] for sid in ids}
    start = time.perf_counter()
    while min(len(v) for v in samples.values()) < runs or time.perf_counter() - start < seconds:
        for sid in ids:  # one round: every stitch once
            t = time.perf_counter()
            sessions[sid].run(None, {name: x})
            samples[sid].append((time.perf_counter() - t) * 1e3)
    target = bundle.manifest.get("target", {})
    if tensorrt:
        fp = trt_info["fingerprint"]
        env = environment(None, None, {"tensorrt": fp.get("tensorrt")})
        env.update(gpu=fp.get("gpu"), compute_capability=fp.get("compute_capability"),
                   l4t=fp.get("l4t"), module=fp.get("module"), power_mode=_power_mode())
        runtime = {"runtime": "tensorrt", "runtime_version": fp.get("tensorrt"),
                   "transfers": "h2d+d2h included", "gpu": fp.get("gpu")}
    else:
        import onnxruntime as ort

        env = environment(bundle.threads, bundle.providers)
        env["share_weights"] = bundle.share_weights
        runtime = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "transfers": False}
    records = []
    for sid in ids:
        entry = bundle._entry(sid)
        stats = latency_stats(samples[sid])
        stats["seconds"] = float(sum(samples[sid]) / 1e3)
        extra = dict(runtime)
        if tensorrt:
            t = trt_info["stitches"][sid]
            extra.update(precision=t["precision"], engine_sha256=t["engine_sha256"],
                         engine_key=t["engine_key"], validation=t["validation"],
                         verified_on_hardware=False)
        records.append({
            # The store keys records by the compiled artifact's hash (the bundle repacks weights,
            # so its graph file has another hash; both are kept).
            "stitch_id": sid, "route": entry.get("route"),
            "artifact_sha256": entry["artifact"].get("compiled_sha256") or entry["artifact"]["sha256"],
            "bundle_artifact_sha256": entry["artifact"]["sha256"],
            "target": target.get("name"), "backend": target.get("backend"),
            "precision": target.get("precision"), "batch": batch,
            "input_shape": [int(d) for d in x.shape], "threads": bundle.threads, "latency_ms": stats,
            "unstable": stats["cv"] > UNSTABLE_CV, "protocol": {
                "warmup_runs": warmup_runs, "warmup_seconds": warmup_seconds, "min_runs": runs,
                "min_seconds": seconds, "interleaved": True},
            "env": env, "measured": True,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})
    return records


def main(argv=None) -> int:
    from .bundle import Bundle
    from .errors import BundleError, NoStitchFitsError
    from .manifest import load_manifest

    p = argparse.ArgumentParser(description="Time every stitch of this bundle on this device.")
    p.add_argument("--bundle", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--stitches", default=None, help="comma-separated ids (default: all)")
    p.add_argument("--no-share-weights", action="store_true")
    args = p.parse_args(argv)
    try:
        # A TensorRT bundle is timed on its engines or not at all (never ONNX Runtime instead).
        backend = (load_manifest(args.bundle).get("target") or {}).get("backend")
        engine = "tensorrt" if backend == "tensorrt" else "onnxruntime"
        bundle = Bundle.open(args.bundle, threads=args.threads, share_weights=not args.no_share_weights,
                             engine=engine)
        try:
            ids = None if not args.stitches else [int(i) for i in args.stitches.split(",")]
        except ValueError:
            raise BundleError(f"--stitches {args.stitches!r} is not a comma-separated list of ids",
                              hint="e.g. --stitches 0,3") from None
        for rec in profile(bundle, runs=args.runs, seconds=args.seconds, batch=args.batch, stitch_ids=ids):
            print(json.dumps(rec), flush=True)
    except (BundleError, NoStitchFitsError) as err:
        print(f"profile_device: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # CUDA / TensorRT failed while running a validated engine
        print(f"profile_device: error: running the engines failed: {str(err).splitlines()[0]}",
              file=sys.stderr)
        return 1
    return 0
