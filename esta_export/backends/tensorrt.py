"""TensorRT backend: engines built on the device, or a device build kit when not on it.

TensorRT plans run only with the TensorRT build that made them, on the GPU architecture they
were built for. So:

- on the target device (TensorRT importable, and for Jetson targets the board's module matches),
  ``compile`` builds the engine in-process with :mod:`esta_export.runtime.tensorrt.build`;
- anywhere else, ``compile`` prepares the stitch (a portable copy of the ONNX graph, INT8 as
  explicit Q/DQ quantized here, and its build plan) and ``finalize`` writes the kit: ``kit.json``,
  ``build_engines.py`` (a launcher for the runtime's :mod:`esta_export.runtime.tensorrt.kit`,
  shipped next to it as ``esta_runtime/``; needs only tensorrt, cuda-python and numpy),
  ``trtexec.sh`` with one command line per stitch, and ``README_DEVICE.md`` saying which steps
  run on the device. ``CompiledArtifact.built`` is then False and compile.json says
  ``"engines_built": false, "device_build_required": true``.

Device-side TensorRT code (build, refit, runner, validation, the capability table) is the
runtime's ``tensorrt`` package; this file plans and writes kits. Engines are planned
weight-stripped (``"weights": "stripped"``) where the capability table allows it (TensorRT 10),
so a bundle stores the family's weights once; full engines otherwise, and the plan says why.
NOT verified on hardware: TensorRT cannot be installed where this was written; everything that
runs without it is tested.
"""

from __future__ import annotations

import dataclasses

import importlib.util
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, CompileError
from ..fsutil import atomic_write_json, atomic_write_text, sha256_file
from ..runtime.tensorrt.capabilities import CAPABILITIES  # noqa: F401 - the table, re-exported
from ..runtime.tensorrt.capabilities import UnsupportedTensorRT
from ..runtime.tensorrt.capabilities import capabilities as _capabilities
from ..runtime.tensorrt.device import is_jetson, module_matches
from ..targets import Target
from . import register
from .base import Backend, CompiledArtifact, Runner

if TYPE_CHECKING:
    from ..bundle.parts import BundleParts

TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where JetPack installs it
RUNTIME_DIR = "esta_runtime"               # the runtime package, shipped next to build_engines.py
LAUNCHER = Path(__file__).resolve().parent.parent / "bundle" / "templates" / "build_engines.py"


def write_launcher(out_dir: Path) -> None:
    """``build_engines.py`` (a launcher) and the runtime package it runs, into ``out_dir``."""
    from ..runtime.ship import copy_runtime

    copy_runtime(Path(out_dir) / RUNTIME_DIR)
    shutil.copyfile(LAUNCHER, Path(out_dir) / ".build_engines.py.tmp")
    os.replace(Path(out_dir) / ".build_engines.py.tmp", Path(out_dir) / "build_engines.py")
TIMING_CACHE = "timing.cache"              # at the kit root, shared by every stitch


def capabilities(version: str) -> dict[str, Any]:
    """The capability table's row for ``version`` (the table lives in the runtime)."""
    try:
        return _capabilities(version)
    except UnsupportedTensorRT as err:
        raise BackendUnavailableError(str(err), hint="use JetPack 5.1 or newer (TensorRT 8.5+)") from None


def weights_plan(target: Target, caps: dict[str, Any]) -> tuple[str, str | None]:
    """Whether the target's engines are built weight-stripped, and why not where they are not."""
    if not (caps["strip_plan"] and caps["refit_identical"]):
        return "full", (f"TensorRT {planned_version(target)} has no weight-stripped plans "
                        f"(STRIP_PLAN + REFIT_IDENTICAL from 10.0): each engine holds its weights")
    if target.execution.dla_core is not None:
        # [unchecked] TensorRT documents refit for GPU engines; DLA loadables keep their weights.
        return "full", "DLA engines are built with their weights (refit is for GPU layers)"
    return "stripped", None


def planned_version(target: Target) -> str:
    """The TensorRT version a target plans for: its runtime.tensorrt, a '>=' floor as is."""
    return (target.runtime.tensorrt or "10.3").lstrip(">=~ ")


def build_plan(target: Target, precision: str, *, input_name: str, chw: tuple[int, int, int],
               onnx: str, engine: str, layer_info: str) -> dict[str, Any]:
    """Every builder decision for one stitch on one target, as plain data (paths relative to
    the kit root). The same dict drives the Python build and the trtexec line."""
    if precision not in ("fp32", "fp16", "int8"):
        raise CompileError(f"the tensorrt backend builds fp32, fp16 or int8, not {precision}",
                           hint="use --precision fp16")
    caps = capabilities(planned_version(target))
    s = target.shapes
    lo, opt, hi = (s.batch_sizes[0],) * 3 if s.static else (s.batch_min, s.batch_opt, s.batch_max)
    ex = target.execution
    weights, why_full = weights_plan(target, caps)
    return {
        "onnx": onnx, "engine": engine, "layer_info": layer_info, "timing_cache": TIMING_CACHE,
        "precision": precision,
        # INT8 graphs carry explicit Q/DQ; fp16 stays enabled so non-quantized layers use it.
        "fp16": precision in ("fp16", "int8"), "int8": precision == "int8",
        "int8_mode": "explicit_qdq" if precision == "int8" else None,
        "workspace_bytes": int((ex.workspace_mb or 1024) * (1 << 20)),
        "profile": {input_name: {"min": [lo, *chw], "opt": [opt, *chw], "max": [hi, *chw]}},
        "dla_core": ex.dla_core, "gpu_fallback": bool(ex.gpu_fallback),
        "builder_optimization_level": (ex.builder_optimization_level
                                       if caps["builder_optimization_level"] else None),
        # "stripped": STRIP_PLAN + REFIT_IDENTICAL, refitted from the shared weights at load.
        "weights": weights, "weights_full_reason": why_full,
        "tensorrt_planned": planned_version(target), "caps": caps,
    }


def trtexec_command(plan: dict[str, Any], times: str) -> list[str]:
    """The trtexec line equivalent to ``plan`` (build, then time with --exportTimes)."""
    dims = lambda d: "x".join(str(v) for v in d)  # noqa: E731
    cmd = [TRTEXEC, f"--onnx={plan['onnx']}", f"--saveEngine={plan['engine']}"]
    for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        cmd.append(flag + "=" + ",".join(f"{n}:{dims(p[key])}" for n, p in plan["profile"].items()))
    if plan["fp16"]:
        cmd.append("--fp16")
    if plan["int8"]:
        cmd.append("--int8")  # explicit Q/DQ in the graph: no calibration cache
    if plan["dla_core"] is not None:
        cmd.append(f"--useDLACore={plan['dla_core']}")
        if plan["gpu_fallback"]:
            cmd.append("--allowGPUFallback")
    cmd.append(f"--memPoolSize=workspace:{plan['workspace_bytes'] >> 20}")
    if plan.get("weights") == "stripped":
        cmd.append("--stripWeights")  # TensorRT 10 trtexec: STRIP_PLAN with identical-weight refit
    if plan["builder_optimization_level"] is not None:
        cmd.append(f"--builderOptimizationLevel={plan['builder_optimization_level']}")
    cmd += [f"--timingCacheFile={plan['timing_cache']}", f"--exportTimes={times}",
            f"--exportLayerInfo={plan['layer_info']}", "--profilingVerbosity=detailed"]
    return cmd


# ---- where are we? --------------------------------------------------------------------------
def on_target_device(target: Target) -> tuple[bool, str]:
    """Whether engines for ``target`` can be built here, and why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT is not installed here"
    jetson = is_jetson()
    if target.device.kind == "jetson":
        if not jetson:
            return False, f"this machine is not a Jetson ({target.device.name} needed)"
        compat = Path("/proc/device-tree/compatible")
        found = compat.read_bytes().decode(errors="replace") if compat.exists() else None
        if not module_matches(target.device.module, found):
            return False, f"this Jetson is not a {target.device.name} ({target.device.module})"
    elif jetson:
        return False, f"target {target.name} is for a desktop/server GPU, this is a Jetson"
    return True, ""


@register("tensorrt")
class TensorRTBackend(Backend):
    module = "tensorrt"

    def available(self) -> bool:
        return importlib.util.find_spec("tensorrt") is not None

    def describe(self) -> dict[str, Any]:
        if self.available():
            import tensorrt as trt
            version, here = trt.__version__, True
        else:
            version, here = None, False
        return {"runtime": "tensorrt", "version": version, "installed": here,
                "capabilities": capabilities(version) if version else None}

    def describe_for(self, target: Target) -> dict[str, Any]:
        d = self.describe()
        d["planned_version"] = planned_version(target)
        d["planned_capabilities"] = capabilities(planned_version(target))
        return d

    def compile(self, onnx_path: Path, target: Target, out_dir: Path, precision: str,
                calibration: np.ndarray | None = None) -> CompiledArtifact:
        import onnx

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        caps = capabilities(planned_version(target))
        model = onnx.load(str(onnx_path), load_external_data=False)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                    default=0)
        if opset > caps["max_opset"]:
            raise CompileError(f"TensorRT {planned_version(target)} parses opset <= "
                               f"{caps['max_opset']}, the graph has {opset}",
                               hint=f"re-export with --target {target.name}")
        if not caps["layernorm_op"] and any(n.op_type == "LayerNormalization"
                                            for n in model.graph.node):
            raise CompileError(f"TensorRT {planned_version(target)} has no LayerNormalization",
                               hint=f"re-export with --target {target.name} (LayerNorm decomposed)")
        inp = model.graph.input[0]
        chw = tuple(int(d.dim_value) for d in inp.type.tensor_type.shape.dim[1:])
        # A self-contained graph per stitch (its own external data file): the device gets no
        # path back into the export folder.
        info: dict[str, Any] = {}
        if precision == "int8":
            if calibration is None or len(calibration) == 0:
                raise CompileError("int8 needs calibration inputs",
                                   hint="pass --calibration DATA.npz with an 'x' array")
            from .onnxruntime import quantize_qdq
            info["qdq"] = quantize_qdq(Path(onnx_path), out_dir / "model.onnx", calibration,
                                       symmetric_activations=True)
        else:
            full = onnx.load(str(onnx_path))
            onnx.save_model(full, str(out_dir / "model.onnx"), save_as_external_data=True,
                            all_tensors_to_one_file=True, location="model.onnx.data",
                            size_threshold=1024)
        files = ["model.onnx"] + (["model.onnx.data"] if (out_dir / "model.onnx.data").exists()
                                  else [])
        plan = build_plan(target, precision, input_name=inp.name, chw=chw, onnx="model.onnx",
                          engine="model.plan", layer_info="layers.json")
        # Stitch folders sit directly under the compile folder (the kit root): one cache for all.
        plan["timing_cache"] = f"../{TIMING_CACHE}"
        atomic_write_json(out_dir / "build_plan.json", plan)
        files.append("build_plan.json")
        here, why = on_target_device(target)
        if here:
            from ..runtime.tensorrt.build import build_engine
            try:
                meta = build_engine(plan, out_dir, log=lambda *_: None)
            except RuntimeError as err:
                raise CompileError(str(err), hint="see build_plan.json; try fp32 or no DLA") from None
            info["engine"] = meta
            return CompiledArtifact(path="model.plan", files=tuple(files + ["model.plan",
                                    "model.plan.json", "layers.json"]), precision=precision,
                                    built=True, info=info)
        info["device_build_required"] = why
        return CompiledArtifact(path="model.plan", files=tuple(files), precision=precision,
                                built=False, info=info)

    def finalize(self, out_dir: Path, target: Target, stitches: list[dict[str, Any]]) -> list[str]:
        """Write the device build kit at ``out_dir`` for ``stitches`` ({"id", "dir"} each)."""
        out_dir = Path(out_dir)
        plans, lines = [], ["#!/bin/sh", "# Run on the target device, from this folder.",
                            "set -e"]
        for st in stitches:
            d = st["dir"]
            plan = json.loads((out_dir / d / "build_plan.json").read_text())
            for key in ("onnx", "engine", "layer_info"):
                plan[key] = f"{d}/{plan[key]}"
            plan["timing_cache"] = TIMING_CACHE
            plan["id"] = st["id"]
            plan["onnx_sha256"] = sha256_file(out_dir / plan["onnx"])
            plans.append(plan)
            lines.append(shlex.join(trtexec_command(plan, f"{d}/times.json")))
        kit = {"schema": "esta-export/trt-kit", "schema_version": "1.0", "target": target.name,
               "tensorrt_planned": planned_version(target),
               "device": target.device.name, "module": target.device.module,
               "jetpack": target.runtime.jetpack, "l4t": target.runtime.l4t,
               "power_mode": (None if target.power_mode is None else
                              {"id": target.power_mode.id, "name": target.power_mode.name}),
               "timing_cache": TIMING_CACHE, "plans": plans,
               # What build_engines.py re-validates every engine against, with the target's gates.
               "reference": "reference.npz",
               "thresholds": dataclasses.asdict(target.validation)}
        write_launcher(out_dir)
        atomic_write_text(out_dir / "trtexec.sh", "\n".join(lines) + "\n")
        os.chmod(out_dir / "trtexec.sh", 0o755)
        atomic_write_text(out_dir / "README_DEVICE.md", _readme(target, len(plans)))
        atomic_write_json(out_dir / "kit.json", kit)
        return ["kit.json", "build_engines.py", RUNTIME_DIR, "trtexec.sh", "README_DEVICE.md"]

    def load(self, artifact_path: Path, target: Target) -> Runner:
        artifact_path = Path(artifact_path)
        here, why = on_target_device(target)
        if not here:
            raise BackendUnavailableError(f"cannot run TensorRT engines here: {why}",
                                          hint="run the device build kit on the device "
                                               "(README_DEVICE.md)")
        if not artifact_path.exists():
            raise BackendUnavailableError(f"engine {artifact_path} has not been built",
                                          hint="run build_engines.py on the device first")
        from ..runtime.tensorrt.device import engine_key, fingerprint, stale_fields
        from ..runtime.tensorrt.validation import open_engine

        meta = json.loads(Path(str(artifact_path) + ".json").read_text())
        onnx_path = artifact_path.with_name("model.onnx")
        plan = json.loads(artifact_path.with_name("build_plan.json").read_text())
        stale = stale_fields(meta["key"], engine_key(plan, sha256_file(onnx_path), fingerprint()))
        if stale:
            raise BackendUnavailableError(f"engine {artifact_path} was built for another setup "
                                          f"(differs in: {', '.join(stale)})",
                                          hint="rebuild it on this device: build_engines.py --fresh")
        plan = dict(plan, engine=artifact_path.name, onnx=onnx_path.name)
        runner, _ = open_engine(artifact_path.parent, plan, meta)  # refits a stripped engine
        return _TrtRunner(runner, meta)


    # ---- bundling (bundle/writer.py): ONNX graphs + engines built on the device ---------------
    def bundle_artifact(self, parts: BundleParts, sid: int, art: dict[str, Any]) -> dict[str, Any]:
        """The stitch's ONNX graph (the engine is built from it), and its engine: copied when
        compile built it (with its build record), else to be built on the device."""
        fields = super().bundle_artifact(parts, sid, art)
        if fields["artifact"]["format"] != "onnx" or not art["path"].endswith(".plan"):
            return fields
        engine = {"path": f"engines/stitch_{sid:03d}.plan", "built": False}
        src = parts.compiled_dir / art["path"]
        meta = src.with_name(src.name + ".json")
        if art.get("built") and src.is_file() and meta.is_file():
            (parts.root / "engines").mkdir(exist_ok=True)
            shutil.copy2(src, parts.root / engine["path"])
            shutil.copy2(meta, parts.root / (engine["path"] + ".json"))
            engine["built"] = True
        return {**fields, "engine": engine}

    def bundle_device_build(self, parts: BundleParts) -> dict[str, Any]:
        """Ship compile's build kit, re-pointed at the bundle's graphs (models/), so
        ``python3 build_engines.py kit.json`` works from the bundle root; the manifest's
        ``target.tensorrt`` says what the device must be."""
        root, compiled, compiled_dir = parts.root, parts.compiled, parts.compiled_dir
        kit_path = compiled_dir / "kit.json"
        kit = json.loads(kit_path.read_text()) if kit_path.is_file() else {}
        by_id = {int(p["id"]): p for p in kit.get("plans", []) if "id" in p}
        plans = []
        for sid in parts.include:
            p = dict(by_id.get(sid) or {})
            if not p:
                continue
            p["onnx"] = f"models/stitch_{sid:03d}.onnx"
            p["engine"] = f"engines/stitch_{sid:03d}.plan"
            p["layer_info"] = f"engines/stitch_{sid:03d}.layers.json"
            p["timing_cache"] = TIMING_CACHE
            p["onnx_sha256"] = sha256_file(root / p["onnx"])
            # A weight-stripped engine is refitted from the graph above, whose initializers point
            # into the bundle's one shared weights file; by name from its index where the parser
            # cannot.
            p["shared_weights"] = {"index": "models/weights.json", "file": "models/weights.bin"}
            plans.append(p)
        if kit:
            kit.update(plans=plans, timing_cache=TIMING_CACHE)
            # build_engines.py validates every engine it builds against the fp32 reference with
            # the target's gates: ship both (the kit in the compile folder finds them next to it).
            kit["thresholds"] = parts.target_spec.get("validation")
            kit["reference"] = parts.write_device_reference()
            atomic_write_json(root / "kit.json", kit)
            lines = ["#!/bin/sh", "# Run on the target device, from this folder.", "set -e",
                     "mkdir -p engines"]
            lines += [shlex.join(trtexec_command(p, f"engines/stitch_{p['id']:03d}.times.json"))
                      for p in plans]
            atomic_write_text(root / "trtexec.sh", "\n".join(lines) + "\n")
        for rel in ("build_engines.py", "README_DEVICE.md", *(compiled.get("build_kit") or [])):
            if (compiled_dir / rel).is_file() and rel not in ("kit.json", "trtexec.sh"):
                shutil.copy2(compiled_dir / rel, root / Path(rel).name)
        if (root / "README_DEVICE.md").is_file():
            atomic_write_text(root / "README_DEVICE.md",
                              (root / "README_DEVICE.md").read_text() + _DEVICE_README_BUNDLE)
        if (compiled_dir / TIMING_CACHE).is_file():
            shutil.copy2(compiled_dir / TIMING_CACHE, root / TIMING_CACHE)
        runtime = compiled.get("runtime") or {}
        version = kit.get("tensorrt_planned") or (runtime.get("tensorrt") if isinstance(runtime, dict) else None)
        if not version and isinstance(runtime, dict) and runtime.get("runtime") == "tensorrt":
            version = runtime.get("version")
        device = parts.target_spec.get("device") or {}
        # What the device must be: compared with the runtime's fingerprint by TensorRT release,
        # compute capability and module family (tensorrt.device.expectation_problems); "gpu" is
        # the target's name for people, never compared with the CUDA device name.
        return {"tensorrt": {
            "version": version, "gpu": kit.get("device") or compiled.get("gpu"),
            "compute_capability": device.get("compute_capability"),
            "module": kit.get("module"), "jetpack": kit.get("jetpack"), "l4t": kit.get("l4t"),
            "engines": {str(p["id"]): {"weights": p.get("weights", "full"),
                                       "why_full": p.get("weights_full_reason")} for p in plans},
            "kit": "kit.json" if kit else None, "timing_cache": TIMING_CACHE,
            "note": "engines are built on the device (python3 build_engines.py kit.json); a plan "
                    "built for another TensorRT version or GPU is refused "
                    "(esta_runtime.tensorrt.check)"}}

    def bundle_readme(self, manifest: dict[str, Any]) -> dict[str, str]:
        trt = (manifest.get("target") or {}).get("tensorrt")
        if not trt:
            return {}
        return {"device_build": (
            f"\n## TensorRT engines (built on the device)\nThe ONNX graphs are in `models/`. Build "
            f"the engines into `engines/` with `python3 build_engines.py kit.json` (or `sh trtexec.sh`) "
            f"on the device. Planned for TensorRT {trt.get('version')} on {trt.get('gpu')}; timing "
            f"cache `{trt.get('timing_cache')}`. A plan built for another TensorRT version or GPU is "
            f"refused (`esta_runtime.tensorrt.check`), and so is one that failed validation "
            f"against `reference.npz` (see README_DEVICE.md). Once they are built and valid, "
            f"`app.py` and `profile_device.py` run the engines; until then `app.py` runs the "
            f"ONNX graphs with ONNX Runtime (and says so) and `profile_device.py` refuses. "
            f"Not verified on hardware.\n")}

class _TrtRunner(Runner):
    def __init__(self, inner, meta: dict) -> None:
        self.inner, self.info = inner, {"engine": meta.get("key"), "layers": meta.get("layers")}

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.inner.infer(x)

    def close(self) -> None:
        self.inner.close()


def _readme(target: Target, n: int) -> str:
    pm = target.power_mode
    power = f"`sudo nvpmodel -m {pm.id}` ({pm.name})" if pm else "the device's default power mode"
    return f"""# Device build kit: {target.name}

esta-export did NOT build TensorRT engines here: TensorRT plans only run with the TensorRT build
and GPU that made them. Nothing in this folder has been verified on hardware yet.

Target: {target.description}
Device: {target.device.name}{f" ({target.device.module})" if target.device.module else ""}
Planned for TensorRT {planned_version(target)}{f", JetPack {target.runtime.jetpack}" if target.runtime.jetpack else ""}.
Stitches: {n}

## On the device (these steps must run there)
1. Copy this whole folder to the device.
2. Set the operating point: {power}{"; `sudo jetson_clocks`" if pm and pm.jetson_clocks else ""}.
3. Build the engines, either
   - `python3 build_engines.py kit.json` (needs TensorRT's Python bindings: on Jetson
     `sudo apt install python3-libnvinfer`, plus `pip install cuda-python numpy` to run them), or
   - `sh trtexec.sh` (one trtexec line per stitch; also writes per-query times and layer info).
   Both reuse `{TIMING_CACHE}` across stitches; each engine is written next to its graph with a
   `.plan.json` key (TensorRT version, GPU, L4T, precision, shapes, ONNX sha256).
4. `python3 build_engines.py kit.json --check` refuses plans built for another TensorRT or GPU.
   After building, `build_engines.py` runs every engine on `reference.npz` and applies the
   target's gates (fp16: cosine similarity and top-1 agreement with the fp32 reference); an
   engine that fails is reported and never used (`validation.json`).
5. Profile on the device: bundle this target (`esta-export bundle`) and run
   `esta-export profile --remote user@device` from the build machine, or `python3
   profile_device.py` in the bundle on the device; it times the validated engines only.

`layers.json` per stitch lists which layers landed on the DLA (DLA targets): ViT attention and
norms fall back to the GPU.
"""


_DEVICE_README_BUNDLE = """
## In this bundle
`python3 build_engines.py kit.json` builds each engine into `engines/`, then runs it on
`reference.npz` (the compile stage's reference inputs and fp32 logits) and applies the target's
gates (`thresholds` in kit.json: fp16 = worst-sample cosine + top-1 agreement; int8 = top-1
agreement). Each verdict goes into `engines/stitch_<id>.plan.json` and all of them into
`validation.json`; an engine that fails is reported and never used. `--check` re-validates.
Only then do `app.py` (the runtime's `engine="auto"`) and `profile_device.py` run the engines;
`profile_device.py` refuses (exit 2) while an engine is missing, stale or invalid, and its records
say runtime "tensorrt", the GPU, and that host<->device copies are included in each timing.
Until the engines are ready, `app.py` runs the ONNX graphs with ONNX Runtime and says so.
None of this has been verified on hardware.
"""
