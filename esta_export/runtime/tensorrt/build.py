"""Build one TensorRT engine from its build plan, on the device it will run on.

A build plan (one per stitch, made by ``esta_export.backends.tensorrt.build_plan``) says
everything: precision flags, workspace, the batch optimization profile, DLA core and GPU
fallback, builder optimization level, timing cache, and whether the engine is weight-stripped
(``weights: "stripped"``: TensorRT 10's STRIP_PLAN + REFIT_IDENTICAL, refitted from the stitch's
ONNX graph, whose weights live in the bundle's one shared weights file, before it runs; see
:mod:`.refit`). Version differences come from :mod:`.capabilities`, read for the TensorRT found
here. Written against the documented API; NOT verified on hardware.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..integrity import sha256_file
from .capabilities import capabilities
from .device import engine_key, fingerprint


def atomic_write(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def weights_mode(plan: dict, caps: dict) -> tuple[str, str | None]:
    """What this TensorRT builds for ``plan``: ("stripped" | "full", why it fell back or None)."""
    if plan.get("weights") != "stripped":
        return "full", None
    if not (caps["strip_plan"] and caps["refit_identical"]):
        return "full", ("this TensorRT has no weight-stripped plans (STRIP_PLAN with REFIT_IDENTICAL "
                        "need 10.0): full engine, its own copy of the weights")
    return "stripped", None


def _strip_weights(config: "trt.IBuilderConfig", caps: dict) -> None:  # noqa: F821
    """Weight-stripped, refittable with the build-time weights (smaller plans, one weights copy)."""
    import tensorrt as trt

    if not (caps["strip_plan"] and caps["refit_identical"]):
        raise RuntimeError("weight-stripped plans need TensorRT 10 (strip_plan, refit_identical)")
    config.set_flag(trt.BuilderFlag.STRIP_PLAN)
    config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)


def build_engine(plan: dict, root: Path, log=print, *, weights: str | None = None) -> dict:
    """Build one engine; writes the .plan, its build record (.plan.json) and layer report.

    ``weights`` overrides the plan's mode ("full" after a stripped engine could not be refitted).
    """
    import tensorrt as trt

    root = Path(root)
    onnx_path = root / plan["onnx"]
    engine_path = root / plan["engine"]
    caps = capabilities(trt.__version__)
    mode, fallback = weights_mode(dict(plan, weights=weights or plan.get("weights")), caps)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch must be requested before TensorRT 10; from 10 it is the only mode.
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
    if mode == "stripped":
        _strip_weights(config, caps)

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
    atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()))
    atomic_write(engine_path, memoryview(serialized))

    key = engine_key(plan, sha256_file(onnx_path), fingerprint())
    layers = layer_report(engine_path)
    meta = {"key": key, "plan_sha256": sha256_file(engine_path), "build_seconds": build_s,
            "plan_bytes": engine_path.stat().st_size, "weights": mode,
            "weights_planned": plan.get("weights", "full"), "weights_fallback": fallback,
            "layers": layers["summary"]}
    atomic_write(Path(str(engine_path) + ".json"), json.dumps(meta, indent=2).encode())
    atomic_write(root / plan["layer_info"], json.dumps(layers, indent=2).encode())
    log(f"built {plan['engine']} ({mode} weights) in {build_s:.1f} s ({layers['summary']})")
    return meta


def layer_report(engine_path: Path) -> dict:
    """Which layers run where, from the engine inspector (needs DETAILED profiling verbosity).

    DLA subgraphs appear as single layers whose name or type mentions DLA / ForeignNode
    [unchecked: confirm the exact naming on a device]; everything else runs on the GPU.
    """
    import tensorrt as trt

    from .runner import deserialize

    held = deserialize(engine_path)
    inspector = held.engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    on_dla = [ly for ly in layers if isinstance(ly, dict) and (
        "DLA" in str(ly.get("LayerType", "")).upper() or "FOREIGNNODE" in str(ly.get("Name", "")).upper())]
    return {"summary": {"layers": len(layers), "dla_layers": len(on_dla),
                        "gpu_layers": len(layers) - len(on_dla)},
            "dla": [ly.get("Name") for ly in on_dla], "engine_information": info}
