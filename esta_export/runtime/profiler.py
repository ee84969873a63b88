"""On-device latency profiler: times every bundled stitch with the runtime the app will use.

ONNX Runtime sessions for every bundle but TensorRT ones; for a TensorRT bundle (manifest target
backend "tensorrt") the engines ``build_engines.py`` built and validated on this device, through
the bundle's own ``TrtRunner`` (each timed call copies the input host->device and the logits
device->host: records say ``"transfers": "h2d+d2h included"``). A TensorRT bundle whose engines
are missing, stale or failed validation is refused (one line, exit status 2): timing ONNX Runtime
on a Jetson's CPU would publish numbers the app never sees. The TensorRT path is NOT verified on
hardware.

Protocol: the one in ``timing.py`` (the same code ``esta-export profile`` uses on the host):
each visit to a stitch is a block of consecutive calls, visits rotate in a new order each round,
the first call after a switch is recorded apart as ``switch_in_ms``, medians carry a bootstrap
interval, and re-measuring stops when it no longer lowers the dispersion. Sessions are the bundle
runtime's own (``Bundle.load``), configured as the manifest's ``session`` says. Each record
carries the environment fingerprint (``environment.py``, also the host's), whether that machine
is of the target's device class, and the artifact's sha256. Prints one JSON object per line
(``python3 profile_device.py --bundle .``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .environment import env_hash, fingerprint, hardware_match, power_mode
from .timing import TimingProtocol, profile_runners, stats_record


def environment(threads: int | None, providers: list[str] | None, runtimes: dict | None = None) -> dict:
    """Where the numbers came from: the host's fingerprint (environment.py) plus what this
    runtime used. ``runtimes``: name -> version of the inference runtime (default: ONNX Runtime's).
    """
    if runtimes is None:
        import onnxruntime as ort

        runtimes = {"onnxruntime": ort.__version__}
    return fingerprint(threads, runtimes={**runtimes, "numpy": np.__version__},
                       extra={"providers": providers, "profiler": "bundle profile_device.py"})


class _SessionRunner:
    """A bundle session called exactly as ``Bundle.run`` calls it."""

    def __init__(self, session, name: str) -> None:
        self.session, self.name = session, name
        if hasattr(session, "compute_ns"):   # the runtime's own per-call time (OpenVINO)
            self.compute_ns = session.compute_ns
            self.compute_source = session.compute_source

    def infer(self, x: np.ndarray):
        return self.session.run(None, {self.name: x})[0]


def _tensorrt_provenance(bundle, ids) -> dict:
    """What a TensorRT record must say: runtime version, GPU, engine key and validation verdict."""
    from .tensorrt.device import fingerprint
    from .tensorrt.runner import max_batch

    fp = fingerprint()
    per = {}
    for sid in ids:
        meta = bundle._engines[sid]["meta"]
        v = meta.get("validation") or {}
        per[sid] = {"engine_sha256": meta.get("plan_sha256"), "engine_key": meta.get("key"),
                    "precision": bundle._engines[sid]["plan"].get("precision"),
                    "max_batch": max_batch(bundle._engines[sid]["plan"]),
                    "weights": meta.get("weights", "full"),
                    "validation": {k: v.get(k) for k in ("metric", "value", "threshold", "passed",
                                                         "samples", "validated")}}
    return {"fingerprint": fp, "stitches": per}


def profile(bundle, *, runs: int | None = None, seconds: float | None = None, batch: int = 1,
            stitch_ids=None, protocol: TimingProtocol | None = None) -> list[dict]:
    from .errors import BundleError

    ids = [s.id for s in bundle.stitches()] if stitch_ids is None else [int(i) for i in stitch_ids]
    for sid in ids:
        bundle._entry(sid)  # unknown ids: one clear line
    proto = TimingProtocol.with_overrides(protocol, min_runs=runs, min_seconds=seconds)
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
    name = bundle.input_spec.get("name", "pixels")
    runners = {sid: _SessionRunner(bundle.load(sid), name) for sid in ids}
    stats = profile_runners(runners, inputs=x, protocol=proto)
    target = bundle.manifest.get("target", {})
    if tensorrt:
        fp = trt_info["fingerprint"]
        env = environment(None, None, {"tensorrt": fp.get("tensorrt")})
        env.update(gpu=fp.get("gpu"), compute_capability=fp.get("compute_capability"),
                   l4t=fp.get("l4t"), module=fp.get("module"), power_mode=power_mode(),
                   accelerator=fp.get("gpu"))
        runtime = {"runtime": "tensorrt", "runtime_version": fp.get("tensorrt"),
                   "transfers": "h2d+d2h included", "gpu": fp.get("gpu")}
        session = {"engine": "tensorrt"}
    elif getattr(bundle, "engine", None) == "openvino":  # OpenVINO IR, compiled as the bundle runs it
        from .ov_engine import openvino_version

        env = environment(bundle.threads, None, {"openvino": openvino_version()})
        runtime = {"runtime": "openvino", "runtime_version": openvino_version(), "transfers": False}
        session = {"engine": "openvino", **{f"stitch_{sid}": bundle.load(sid).info["config"] for sid in ids}}
    else:
        import onnxruntime as ort

        env = environment(bundle.threads, bundle.providers)
        env["share_weights"] = bundle.share_weights
        runtime = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "transfers": False}
        session = bundle.session_settings.to_dict()
    ehash = env_hash(env)
    hw = hardware_match(target.get("device") or {"kind": "cpu"}, env)
    records = []
    for sid in ids:
        entry = bundle._entry(sid)
        extra = dict(runtime)
        if tensorrt:
            t = trt_info["stitches"][sid]
            extra.update(precision=t["precision"], engine_sha256=t["engine_sha256"],
                         engine_key=t["engine_key"], validation=t["validation"])
        records.append({
            # The store keys records by the compiled artifact's hash (the bundle repacks weights,
            # so its graph file has another hash; both are kept).
            "stitch_id": sid, "route": entry.get("route"),
            "artifact_sha256": entry["artifact"].get("compiled_sha256") or entry["artifact"]["sha256"],
            "bundle_artifact_sha256": entry["artifact"]["sha256"],
            "target": target.get("name"), "backend": target.get("backend"),
            "precision": target.get("precision"), "batch": batch,
            "input_shape": [int(d) for d in x.shape], "threads": bundle.threads,
            **stats_record(stats[sid], proto), "session": session,
            "env": env, "env_hash": ehash, "measured": True,
            "hardware": hw, "verified_on_hardware": hw["matches"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})
    return records


def main(argv=None) -> int:
    from .bundle import Bundle
    from .errors import BundleError, NoStitchFitsError
    from .manifest import load_manifest

    p = argparse.ArgumentParser(description="Time every stitch of this bundle on this device.")
    p.add_argument("--bundle", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--runs", type=int, default=None, help="steady-state calls per stitch, at least")
    p.add_argument("--seconds", type=float, default=None, help="steady-state seconds per stitch, at least")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--stitches", default=None, help="comma-separated ids (default: all)")
    p.add_argument("--no-share-weights", action="store_true")
    args = p.parse_args(argv)
    try:
        # A TensorRT bundle is timed on its engines or not at all (never ONNX Runtime instead).
        backend = (load_manifest(args.bundle).get("target") or {}).get("backend")
        engine = backend if backend in ("tensorrt", "openvino") else "onnxruntime"
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
