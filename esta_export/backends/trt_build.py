#!/usr/bin/env python3
"""Build and run TensorRT engines for stitch graphs; standalone (tensorrt + numpy only).

This one file is both the code path esta-export uses when it runs on the target device and the
``build_engines.py`` it writes into a device build kit (copied verbatim), so a Jetson without
esta-export builds exactly what esta-export would have built:

    python3 build_engines.py kit.json            # build every engine listed in kit.json
    python3 build_engines.py kit.json --check    # only check existing plans against this device

After building (or finding) each engine, it is run on the kit's reference inputs and compared with
the fp32 reference logits (``reference.npz``: ``x``, optional labels ``y``, ``ref_<id>``) using the
target's tier-3 gates (fp16: worst-sample cosine and top-1 agreement; int8: top-1 agreement, plus
the accuracy drop when labels exist). TensorRT builds are not deterministic, so this runs after
every build and on ``--check``. The verdict goes into the engine's ``.plan.json`` (``validation``)
and into ``validation.json`` next to kit.json; an engine that fails is reported, marked failed and
refused by the bundle runtime and its profiler.

A build plan (one per stitch, made by ``esta_export.backends.tensorrt.build_plan``) says
everything: precision flags, workspace, the batch optimization profile, DLA core and GPU
fallback, builder optimization level, timing cache. Version differences come from the plan's
``caps`` (the capability table row for the TensorRT version it was planned for), checked
against the TensorRT found here.

Written against the TensorRT Python API documented for 8.5 to 10.x; NOT verified on hardware
(no TensorRT and no NVIDIA GPU where esta-export was developed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _cudart():
    """CUDA runtime bindings of cuda-python: ``cuda.bindings.runtime`` from 12.6 on; the older
    ``cuda.cudart`` module (deprecated there) before."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def device_fingerprint() -> dict:
    """What a plan is tied to: TensorRT build, GPU, and on Jetson the L4T release and module."""
    import tensorrt as trt

    fp = {"tensorrt": trt.__version__, "machine": platform.machine(), "gpu": None,
          "compute_capability": None, "l4t": None, "module": None}
    try:
        cudart = _cudart()  # cuda-python, as in TensorRT's own samples
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            fp["gpu"] = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            fp["compute_capability"] = f"{prop.major}.{prop.minor}"
    except ImportError:
        pass
    if os.path.exists("/etc/nv_tegra_release"):
        fp["l4t"] = open("/etc/nv_tegra_release").readline().strip()
    if os.path.exists("/proc/device-tree/compatible"):
        fp["module"] = open("/proc/device-tree/compatible", "rb").read().replace(b"\0", b" ") \
            .decode(errors="replace").strip()
    return fp


def engine_key(plan: dict, onnx_sha256: str, fp: dict) -> dict:
    """Engine cache key: a plan is reusable only when every field matches."""
    return {"tensorrt": fp["tensorrt"], "gpu": fp["gpu"],
            "compute_capability": fp["compute_capability"], "l4t": fp["l4t"],
            "precision": plan["precision"], "profile": plan["profile"],
            "dla_core": plan.get("dla_core"),
            "builder_optimization_level": plan.get("builder_optimization_level"),
            "onnx_sha256": onnx_sha256}


def check_plan_key(saved: dict, current: dict) -> list[str]:
    """Fields that differ between the key a plan was built with and this device: [] = usable."""
    return [k for k in current if saved.get(k) != current[k]]


def build_engine(plan: dict, root: Path, log=print) -> dict:
    """Build one engine from its plan; writes the .plan, its key (.plan.json) and layer report."""
    import tensorrt as trt

    root = Path(root)
    onnx_path = root / plan["onnx"]
    engine_path = root / plan["engine"]
    caps = plan["caps"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch must be requested before TensorRT 10; from 10 it is the only mode and the
    # flag is gone.
    flags = 0
    if caps["explicit_batch_flag"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves the graph's external data next to it (load by path, not bytes).
    if not parser.parse_from_file(str(onnx_path)):
        errors = [f"node {parser.get_error(i).node()}: {parser.get_error(i).desc()}"
                  for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + " | ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_bytes"])
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the layer report
    if plan["precision"] == "fp32":
        # TF32 is on by default on Ampere (Orin included): matmuls would round to 10-bit
        # mantissas and miss the fp32 gate. An fp32 plan computes in fp32.
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan["fp16"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan["int8"]:
        # The graph carries explicit Q/DQ (quantized by esta-export): no calibrator needed.
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.get("builder_optimization_level") is not None and caps["builder_optimization_level"]:
        config.builder_optimization_level = plan["builder_optimization_level"]
    if plan.get("dla_core") is not None:
        if builder.num_DLA_cores <= plan["dla_core"]:
            raise RuntimeError(f"this device has {builder.num_DLA_cores} DLA cores; the plan "
                               f"asks for core {plan['dla_core']}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan["dla_core"]
        if plan.get("gpu_fallback"):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    profile = builder.create_optimization_profile()
    for name, dims in plan["profile"].items():
        profile.set_shape(name, dims["min"], dims["opt"], dims["max"])
    config.add_optimization_profile(profile)

    # One timing cache per target, shared by every stitch: later builds reuse earlier timings.
    cache_path = root / plan["timing_cache"]
    blob = cache_path.read_bytes() if cache_path.exists() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} (see the log above)")
    build_s = time.perf_counter() - t0
    _atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()))
    _atomic_write(engine_path, memoryview(serialized))

    fp = device_fingerprint()
    key = engine_key(plan, sha256_file(onnx_path), fp)
    layers = layer_report(engine_path)
    meta = {"key": key, "plan_sha256": sha256_file(engine_path), "build_seconds": build_s,
            "layers": layers["summary"]}
    _atomic_write(Path(str(engine_path) + ".json"), json.dumps(meta, indent=2).encode())
    _atomic_write(root / plan["layer_info"], json.dumps(layers, indent=2).encode())
    log(f"built {plan['engine']} in {build_s:.1f} s ({layers['summary']})")
    return meta


def layer_report(engine_path: Path) -> dict:
    """Which layers run where, from the engine inspector (needs DETAILED profiling verbosity).

    DLA subgraphs appear as single layers whose name or type mentions DLA / ForeignNode
    [unchecked: confirm the exact naming on a device]; everything else runs on the GPU.
    """
    import tensorrt as trt

    engine = _deserialize(engine_path)
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    on_dla = [ly for ly in layers if isinstance(ly, dict) and (
        "DLA" in str(ly.get("LayerType", "")).upper() or "FOREIGNNODE" in str(ly.get("Name", "")).upper())]
    return {"summary": {"layers": len(layers), "dla_layers": len(on_dla),
                        "gpu_layers": len(layers) - len(on_dla)},
            "dla": [ly.get("Name") for ly in on_dla], "engine_information": info}


def _deserialize(engine_path: Path):
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise RuntimeError(f"{engine_path} does not deserialize with TensorRT {trt.__version__}; "
                           f"rebuild it on this device")
    return engine


class TrtRunner:
    """Synchronous runner: float32 NCHW in, float32 logits out (name-based tensor API, v3)."""

    def __init__(self, engine_path: Path) -> None:
        import numpy as np
        import tensorrt as trt

        cudart = _cudart()
        self.np, self.trt, self.cudart = np, trt, cudart
        self.engine = _deserialize(engine_path)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.input = next(n for n in names if mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, x):
        np, cudart = self.np, self.cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape(self.input, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        out = np.empty(out_shape, dtype=np.float32)
        d_in, d_out = self._buffer(self.input, x.nbytes), self._buffer(self.output, out.nbytes)
        self.context.set_tensor_address(self.input, d_in)
        self.context.set_tensor_address(self.output, d_out)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return out

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else (rest or None)


def _atomic_write(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- validation (tier 3) ---------------------------------------------------------------------
# The same arithmetic as esta_export/validate.py (compare + gate), in plain numpy because this file
# runs on devices without esta-export. tests/test_backends_tensorrt.py runs both on the same
# arrays and requires identical figures and verdicts; change them together.
DEFAULT_THRESHOLDS = {  # esta_export.targets.Thresholds defaults; the kit's target overrides them
    "fp32_max_rel_error": 1e-4, "fp16_min_cosine": 0.999, "fp16_min_top1_agreement": 0.98,
    "bf16_min_cosine": 0.99, "bf16_min_top1_agreement": 0.95, "int8_min_top1_agreement": 0.90,
    "max_accuracy_drop": 0.01,
}
VALIDATION = "validation.json"
REFERENCE = "reference.npz"


def compare_logits(out, ref, labels=None) -> dict:
    """Every agreement figure between ``out`` and ``ref`` logits [N, classes] (validate.compare)."""
    import numpy as np

    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return {"finite": True, "shape": list(out.shape), "reference_shape": list(ref.shape),
                "samples": int(len(ref))}
    if not np.all(np.isfinite(out)):
        return {"finite": False, "max_abs_error": float("inf"), "rel_error": float("inf"),
                "cosine_min": 0.0, "cosine_mean": 0.0, "top1_agreement": 0.0, "samples": len(ref)}
    diff = np.abs(out - ref)
    scale = float(np.max(np.abs(ref))) or 1.0
    num = np.sum(out * ref, axis=1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    m = {"finite": True, "samples": int(len(ref)), "max_abs_error": float(diff.max()),
         "rel_error": float(diff.max() / scale), "cosine_min": float(cos.min()),
         "cosine_mean": float(cos.mean()),
         "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        m["accuracy"] = float(np.mean(out.argmax(1) == labels))
        m["reference_accuracy"] = float(np.mean(ref.argmax(1) == labels))
        m["accuracy_drop"] = m["reference_accuracy"] - m["accuracy"]
    return m


def gate(precision: str, measured: dict, thresholds: dict | None = None) -> dict:
    """The tier-3 verdict (validate.gate): metric, value, threshold, passed, and every figure."""
    th = dict(DEFAULT_THRESHOLDS, **(thresholds or {}))
    if "reference_shape" in measured:
        checks = [("shape", 0.0, 1.0, False)]
    elif not measured.get("finite", True):
        checks = [("finite", 0.0, 1.0, False)]
    elif precision == "fp32":
        checks = [("rel_error", measured["rel_error"], th["fp32_max_rel_error"],
                   measured["rel_error"] <= th["fp32_max_rel_error"])]
    elif precision in ("fp16", "bf16"):
        min_cos = th[f"{precision}_min_cosine"]
        min_top1 = th[f"{precision}_min_top1_agreement"]
        checks = [("cosine_min", measured["cosine_min"], min_cos, measured["cosine_min"] >= min_cos),
                  ("top1_agreement", measured["top1_agreement"], min_top1,
                   measured["top1_agreement"] >= min_top1)]
    elif precision == "int8":
        checks = [("top1_agreement", measured["top1_agreement"], th["int8_min_top1_agreement"],
                   measured["top1_agreement"] >= th["int8_min_top1_agreement"])]
        if "accuracy_drop" in measured:
            checks.append(("accuracy_drop", measured["accuracy_drop"], th["max_accuracy_drop"],
                           measured["accuracy_drop"] <= th["max_accuracy_drop"]))
    else:
        raise ValueError(f"unknown precision {precision!r}")
    failed = [c for c in checks if not c[3]]
    metric, value, threshold, _ = (failed or checks)[0]
    return {"tier": 3, "precision": precision, "metric": metric, "value": value,
            "threshold": threshold, "passed": not failed, **measured}


def describe_failure(v: dict) -> str:
    """One line for a failed or missing verdict (validate.describe_failure, plus this file's cases)."""
    if v.get("passed") is None:
        return f"not validated: {v.get('reason', 'no verdict')}"
    if v.get("metric") == "finite":
        return "outputs contain NaN or Inf"
    if v.get("metric") == "shape":
        return f"output shape {v.get('shape')} differs from the reference {v.get('reference_shape')}"
    op = "<=" if v["metric"] in ("rel_error", "accuracy_drop") else ">="
    return (f"{v['precision']} validation failed: {v['metric']} = {v['value']:.6g}, "
            f"needs {op} {v['threshold']:.6g}")


def load_reference(root: Path, kit: dict) -> dict | None:
    """The fp32 reference (inputs ``x``, labels ``y``, logits ``ref_<id>``) the kit names, or the
    compile stage's ``reference.npz`` next to kit.json; None when there is none."""
    import numpy as np

    path = Path(root) / (kit.get("reference") or REFERENCE)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "x" not in arrays:
        return None
    return {"path": path.name, "sha256": sha256_file(path), "x": arrays["x"].astype(np.float32),
            "y": arrays.get("y"),
            "refs": {int(k[4:]): v for k, v in arrays.items() if k.startswith("ref_") and k[4:].isdigit()}}


def kit_thresholds(root: Path, kit: dict) -> tuple[dict, str]:
    """The target's gates: kit.json's ``thresholds``, else compile.json's target (the compile
    folder's kit), else esta-export's defaults; and where they came from."""
    if isinstance(kit.get("thresholds"), dict):
        return dict(DEFAULT_THRESHOLDS, **kit["thresholds"]), "kit.json"
    compiled = Path(root) / "compile.json"
    if compiled.is_file():
        try:
            th = (json.loads(compiled.read_text()).get("target_spec") or {}).get("validation")
        except ValueError:
            th = None
        if isinstance(th, dict):
            return dict(DEFAULT_THRESHOLDS, **th), "compile.json target"
    return dict(DEFAULT_THRESHOLDS), "esta-export defaults"


def max_batch(plan: dict) -> int:
    """Largest batch the plan's optimization profile accepts (first input)."""
    return int(next(iter(plan["profile"].values()))["max"][0])


def infer_in_chunks(runner, x, batch_limit: int):
    """Run ``x`` through ``runner`` in slices the optimization profile accepts."""
    import numpy as np

    if len(x) <= batch_limit:  # one inference, no extra copy (the profiler times this call)
        return runner.infer(x)
    return np.concatenate([runner.infer(x[i:i + batch_limit])
                           for i in range(0, len(x), max(1, batch_limit))])


def validate_engine(plan: dict, root: Path, reference: dict | None, thresholds: dict) -> dict:
    """Run the built engine on the reference inputs and gate it against the fp32 logits.

    Never raises for a bad engine: a failure to run is a failed verdict with its reason. A
    missing reference (or cuda-python) gives ``passed: None`` (not validated, so not usable).
    """
    root = Path(root)
    engine_path = root / plan["engine"]
    base = {"tier": 3, "precision": plan["precision"], "thresholds": thresholds,
            "engine_sha256": sha256_file(engine_path),
            "validated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ref = None if reference is None else reference["refs"].get(int(plan.get("id", -1)))
    if ref is None:
        return {**base, "passed": None,
                "reason": f"no fp32 reference logits for stitch {plan.get('id')} ({REFERENCE})"}
    base.update(reference={"path": reference["path"], "sha256": reference["sha256"],
                           "samples": int(len(reference["x"]))})
    try:
        runner = TrtRunner(engine_path)
    except ImportError as err:
        return {**base, "passed": None,
                "reason": f"cannot run engines: {err} (pip install cuda-python numpy)"}
    except RuntimeError as err:
        return {**base, "passed": False, "metric": "run", "reason": str(err)}
    try:
        import tensorrt as trt

        base["runtime"] = f"tensorrt {trt.__version__}"
        out = infer_in_chunks(runner, reference["x"], max_batch(plan))
    except RuntimeError as err:
        return {**base, "passed": False, "metric": "run", "reason": f"inference failed: {err}"}
    finally:
        runner.close()
    return {**base, **gate(plan["precision"], compare_logits(out, ref, reference.get("y")),
                           thresholds)}


def _record_validation(engine: Path, verdict: dict) -> None:
    """Put the verdict into the engine's build record (``.plan.json``), atomically."""
    meta_path = Path(str(engine) + ".json")
    meta = json.loads(meta_path.read_text())
    meta["validation"] = verdict
    _atomic_write(meta_path, json.dumps(meta, indent=2).encode())


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
    kit = json.loads(kit_path.read_text())
    root = kit_path.parent
    try:
        import tensorrt as trt
    except ImportError:
        print("TensorRT's Python bindings are missing: on Jetson `sudo apt install "
              "python3-libnvinfer` (system Python), elsewhere `pip install tensorrt`",
              file=sys.stderr)
        return 2
    planned = kit["tensorrt_planned"]
    if trt.__version__.split(".")[:2] != planned.split(".")[:2]:
        print(f"warning: kit planned for TensorRT {planned}, this device has {trt.__version__}; "
              f"re-run `esta-export compile` with a target for this TensorRT version if the "
              f"build fails", file=sys.stderr)
    fp = device_fingerprint()
    reference = load_reference(root, kit)
    thresholds, th_source = kit_thresholds(root, kit)
    if reference is None:
        print(f"warning: no {REFERENCE} next to {kit_path.name}: engines cannot be validated and "
              f"will not be used; copy the compile folder's or bundle's {REFERENCE} here",
              file=sys.stderr)
    status, results = 0, []
    for plan in kit["plans"]:
        engine = root / plan["engine"]
        meta_path = Path(str(engine) + ".json")
        current = engine_key(plan, sha256_file(root / plan["onnx"]), fp)
        row = {"id": plan.get("id"), "engine": plan["engine"], "precision": plan["precision"]}
        results.append(row)
        have = engine.exists() and meta_path.exists()
        stale = check_plan_key(json.loads(meta_path.read_text())["key"], current) if have else None
        if have and not stale and not args.fresh:
            print(f"found {plan['engine']} (matches this device)")
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
            try:
                build_engine(plan, root)
            except RuntimeError as err:
                print(f"FAILED {plan['engine']}: {err}", file=sys.stderr)
                row.update(status="build failed", reason=str(err))
                status = 1
                continue
        verdict = validate_engine(plan, root, reference, thresholds)
        _record_validation(engine, verdict)
        row["validation"] = {k: verdict.get(k) for k in (
            "passed", "metric", "value", "threshold", "cosine_min", "top1_agreement",
            "rel_error", "accuracy_drop", "samples", "reason") if k in verdict}
        if verdict.get("passed") is True:
            row["status"] = "ok"
            print(f"ok {plan['engine']}: {verdict['metric']} = {verdict['value']:.6g} "
                  f"(threshold {verdict['threshold']:.6g})")
        else:
            row["status"] = "failed validation" if verdict.get("passed") is False else "not validated"
            print(f"FAILED {plan['engine']}: {describe_failure(verdict)}; it will not be used",
                  file=sys.stderr)
            status = 1
    summary = {"schema": "esta-export/trt-validation", "schema_version": "1.0",
               "target": kit.get("target"), "device": fp, "mode": "check" if args.check else "build",
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "thresholds": thresholds,
               "thresholds_source": th_source,
               "reference": None if reference is None else {
                   "path": reference["path"], "sha256": reference["sha256"],
                   "samples": int(len(reference["x"])), "labelled": reference["y"] is not None},
               "ok": sum(r.get("status") == "ok" for r in results),
               "failed": sum(r.get("status") != "ok" for r in results), "engines": results}
    _atomic_write(root / VALIDATION, json.dumps(summary, indent=2).encode())
    print(f"{summary['ok']} engines valid, {summary['failed']} not; details in {VALIDATION}")
    return status


if __name__ == "__main__":
    sys.exit(main())
