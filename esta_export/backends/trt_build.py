#!/usr/bin/env python3
"""Build and run TensorRT engines for stitch graphs; standalone (tensorrt + numpy only).

This one file is both the code path esta-export uses when it runs on the target device and the
``build_engines.py`` it writes into a device build kit (copied verbatim), so a Jetson without
esta-export builds exactly what esta-export would have built:

    python3 build_engines.py kit.json            # build every engine listed in kit.json
    python3 build_engines.py kit.json --check    # only check existing plans against this device

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


def device_fingerprint() -> dict:
    """What a plan is tied to: TensorRT build, GPU, and on Jetson the L4T release and module."""
    import tensorrt as trt

    fp = {"tensorrt": trt.__version__, "machine": platform.machine(), "gpu": None,
          "compute_capability": None, "l4t": None, "module": None}
    try:
        from cuda import cudart  # cuda-python, as in TensorRT's own samples
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
        from cuda import cudart

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the TensorRT engines listed in kit.json, "
                                             "on the device they will run on.")
    ap.add_argument("kit", nargs="?", default="kit.json")
    ap.add_argument("--check", action="store_true", help="only check existing plans")
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
    status = 0
    for plan in kit["plans"]:
        engine = root / plan["engine"]
        meta_path = Path(str(engine) + ".json")
        current = engine_key(plan, sha256_file(root / plan["onnx"]), fp)
        if engine.exists() and meta_path.exists() and not args.fresh:
            stale = check_plan_key(json.loads(meta_path.read_text())["key"], current)
            if not stale:
                print(f"ok {plan['engine']} (matches this device)")
                continue
            print(f"{plan['engine']} was built for another setup (differs in: "
                  f"{', '.join(stale)})", file=sys.stderr)
        if args.check:
            status = 1
            continue
        try:
            build_engine(plan, root)
        except RuntimeError as err:
            print(f"FAILED {plan['engine']}: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
