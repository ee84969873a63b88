"""ONNX Runtime backend: offline-optimized fp32 graphs and static QDQ INT8.

- fp32: the graph is optimized offline at the target's level (``ort_optimization``) and saved,
  its large initializers in a per-artifact external data file. BASIC keeps only standard ONNX
  ops (safe for any consumer); EXTENDED adds ORT contrib fusions the CPU provider runs; ALL
  would add layout changes tied to the CPU that made them, so targets do not use it offline.
- int8: ``quant_pre_process`` (shape inference + basic optimization), then ``quantize_static``
  in QDQ format, uint8 asymmetric activations and int8 symmetric per-channel weights (the U8S8
  form that x86 and ARM MLAS kernels prefer), calibrated on the given inputs. On x86 without
  VNNI/AMX the U8S8 kernels saturate (vpmaddubsw adds product pairs into int16), so weights are
  7-bit (``reduce_range=True``) unless both this CPU and the target's declared ``cpu_flags`` have
  int8 dot products (``esta_export.runtime.cpu.int8_plan``); the artifact records which
  (``info["int8_isa"]``) and the bundle runtime checks it against the device's CPU.
- Loading checks ``session.get_providers()``: a silent fall back to the CPU provider is an error.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, CompileError
from ..runtime.session import SessionSettings, ort_session_options
from ..targets import Target
from . import register
from .base import Backend, CompiledArtifact, Runner

# Version differences, in one place. Keyed by the first version that has the row's behaviour.
CAPABILITIES: dict[tuple[int, int], dict[str, Any]] = {
    (1, 16): {"quant_pre_process": True, "qdq": True, "per_channel": True,
              "optimized_model_external_data": True, "int4_weights": False},
    (1, 20): {"quant_pre_process": True, "qdq": True, "per_channel": True,
              "optimized_model_external_data": True, "int4_weights": True},
}

_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
# Ops worth quantizing in a ViT: the GEMMs carry the compute; quantizing Add/Softmax/LayerNorm
# costs accuracy and gains little on CPU.
INT8_OPS = ("MatMul", "Gemm", "Conv")


def capabilities(version: str) -> dict[str, Any]:
    v = tuple(int(p) for p in version.split(".")[:2])
    keys = [k for k in sorted(CAPABILITIES) if k <= v]
    if not keys:
        raise BackendUnavailableError(f"onnxruntime {version} is older than the oldest supported "
                                      f"({'.'.join(map(str, min(CAPABILITIES)))})",
                                      hint="pip install -U onnxruntime")
    return dict(CAPABILITIES[keys[-1]])


def int8_isa(target: Target) -> dict[str, Any]:
    """The int8 plan for ``target`` on this CPU, with the quantizer setting it implies."""
    from ..runtime.cpu import int8_plan

    plan = int8_plan(target.device.cpu_flags)
    plan["setting"] = {"reduce_range": not plan["full_range"]}
    return plan


def _ort():
    import onnxruntime as ort
    return ort


def _session_options(target: Target, level: str):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    if target.execution.threads:
        so.intra_op_num_threads = target.execution.threads
    so.log_severity_level = 3
    return so


def _providers(target: Target) -> list[str]:
    return list(target.runtime.providers) or ["CPUExecutionProvider"]


class _Reader:
    """Calibration data reader: one sample per call, as quantize_static expects."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._it = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._it, None)


def quantize_qdq(src: Path, dst: Path, x: np.ndarray, *,
                 symmetric_activations: bool, reduce_range: bool = False) -> dict[str, Any]:
    """Static QDQ INT8 of ``src`` into ``dst``, calibrated (MinMax) on the samples ``x``.

    CPU (MLAS) prefers uint8 asymmetric activations; TensorRT needs int8 symmetric Q/DQ
    (zero point 0), hence the switch. Weights are int8 symmetric per output channel, in 7 bits
    with ``reduce_range`` (exact on x86 CPUs without VNNI).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)
    import onnx

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    act = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".quant.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True,
                              save_as_external_data=True, all_tensors_to_one_file=True,
                              external_data_location="pre.onnx.data")
            quantize_static(
                str(pre), str(dst), _Reader(name, x.astype(np.float32)),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS),
                per_channel=True, reduce_range=reduce_range, activation_type=act, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": symmetric_activations,
                               "WeightSymmetric": True})
        except Exception as err:  # the quantizer raises assorted types; keep its message
            raise CompileError(f"int8 quantization of {Path(src).name} failed: {err}",
                               hint="try --precision fp32 or other calibration data") from None
    return {"quant_format": "QDQ",
            "activations": "int8 symmetric" if symmetric_activations else "uint8 asymmetric",
            "weights": "int8 symmetric per-channel" + (", 7-bit (reduce_range)" if reduce_range else ""),
            "reduce_range": bool(reduce_range), "ops": list(INT8_OPS),
            "calibration_samples": int(len(x)), "calibrate_method": "MinMax"}


@register("onnxruntime")
class OnnxRuntimeBackend(Backend):
    module = "onnxruntime"

    def available(self) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def describe(self) -> dict[str, Any]:
        self.require()
        ort = _ort()
        caps = capabilities(ort.__version__)
        caps["available_providers"] = ort.get_available_providers()
        return {"runtime": "onnxruntime", "version": ort.__version__, "capabilities": caps}

    def compile(self, onnx_path: Path, target: Target, out_dir: Path, precision: str,
                calibration: np.ndarray | None = None) -> CompiledArtifact:
        self.require()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if precision == "fp32":
            files, info = self._optimize(Path(onnx_path), target, out_dir)
        elif precision == "int8":
            if calibration is None or len(calibration) == 0:
                raise CompileError("int8 needs calibration inputs",
                                   hint="pass --calibration DATA.npz with an 'x' array")
            files, info = self._quantize(Path(onnx_path), target, out_dir, calibration)
        else:
            raise CompileError(f"the onnxruntime backend builds fp32 and int8, not {precision}",
                               hint="use --precision fp32 or int8")
        # Prove the artifact loads by path with its external data before calling it compiled.
        self.load(out_dir / "model.onnx", target).close()
        return CompiledArtifact(path="model.onnx", files=tuple(files), precision=precision, info=info)

    def _optimize(self, src: Path, target: Target, out_dir: Path) -> tuple[list[str], dict]:
        ort = _ort()
        level = target.ort_optimization
        so = _session_options(target, level)
        so.optimized_model_filepath = str(out_dir / "model.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    "model.onnx.data")
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(str(src), so, providers=_providers(target))
        except Exception as err:  # ORT raises its own exception types; keep its message
            raise CompileError(f"onnxruntime could not optimize {src.name}: {err}",
                               hint="check the graph with 'esta-export inspect'") from None
        files = ["model.onnx"] + (["model.onnx.data"] if (out_dir / "model.onnx.data").exists()
                                  else [])
        return files, {"optimization_level": level, "offline": True}

    def _quantize(self, src: Path, target: Target, out_dir: Path,
                  x: np.ndarray) -> tuple[list[str], dict]:
        plan = int8_isa(target)
        info = quantize_qdq(src, out_dir / "model.onnx", x, symmetric_activations=False,
                            reduce_range=plan["setting"]["reduce_range"])
        info["int8_isa"] = plan
        return ["model.onnx"], info

    def int8_isa(self, target: Target) -> dict[str, Any]:
        return int8_isa(target)

    def load(self, artifact_path: Path, target: Target,
             settings: SessionSettings | None = None) -> Runner:
        self.require()
        return OrtRunner(Path(artifact_path), target, settings)


class OrtRunner(Runner):
    def __init__(self, path: Path, target: Target, settings: SessionSettings | None = None) -> None:
        ort = _ort()
        wanted = _providers(target)
        # The bundle runtime's session configuration, from the one function it uses too
        # (runtime/session.py): spinning off, prepacking and arena off when sharing weights,
        # threads from the target or from 'profile --tune'. So profiled latency is the app's.
        self.settings = settings or SessionSettings.from_target(target)
        so = ort_session_options(ort, self.settings)
        # The offline graph is already optimized; ALL adds this CPU's layout transforms online
        # (ONNX Runtime's default level, the one the bundle runtime gets).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), so, providers=wanted)
        except Exception as err:
            raise BackendUnavailableError(f"onnxruntime could not load {path}: {err}",
                                          hint="re-run compile (--fresh) on this machine") from None
        got = self.session.get_providers()
        if got[0] != wanted[0]:
            raise BackendUnavailableError(
                f"onnxruntime fell back to {got[0]} instead of {wanted[0]} for target "
                f"{target.name}", hint=f"install the onnxruntime build with {wanted[0]} and its "
                                       f"libraries, or use the cpu target")
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.info = {"providers": got, "threads": self.settings.threads or "default",
                     "session": self.settings.to_dict()}

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output], {self.input: np.ascontiguousarray(x, np.float32)})[0]
        return np.array(out, dtype=np.float32, copy=True)  # never a view that pins the arena

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
