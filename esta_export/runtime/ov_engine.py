"""The OpenVINO engine of the bundle runtime: OpenVINO IR stitches compiled by OpenVINO.

Each stitch's ``models/stitch_<id>.xml`` points into the bundle's one shared weights file
(``core.read_model(xml, bin)``). The compiled model gets the settings its artifact was validated
with, recorded in the manifest: the device and the pinned ``INFERENCE_PRECISION_HINT`` (f32 for
fp32 and int8 on the CPU: OpenVINO would otherwise compute in bf16 on AMX CPUs without saying so),
and reads back what the plugin really uses (``info``). One infer request per calling thread,
so ``run`` may be called from several threads at once. Imports numpy and openvino only.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .errors import BundleError

_CORE = None
_CORE_LOCK = threading.Lock()


def _core():
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            try:
                import openvino as ov
            except ImportError:
                raise BundleError("this bundle's stitches are OpenVINO IR and openvino is not installed",
                                  hint="pip install openvino (the version the bundle README names)") from None
            _CORE = ov.Core()
        return _CORE


def openvino_version() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


# What SyncRequest.compute_ns reports, as records name it.
COMPUTE_SOURCE = "OpenVINO InferRequest.latency (the request's own inference time; benchmark_app reports this)"


class SyncRequest:
    """One infer request run the way OpenVINO's own ``benchmark_app -api sync`` runs it: the input
    bound once as a tensor over the caller's buffer (no copy; bound again only when the caller
    hands another buffer), then ``infer()`` with the outputs shared; only the result leaves as a
    copy (the request reuses its output buffer). The profiler (``backends/openvino.py``) and the
    bundle runtime both call this, so what is measured is what the application runs.

    Binding a new ``ov.Tensor`` on every call cost 40-75 us more per call here (OpenVINO 2026.4,
    2-core Xeon; ``benchmarks/bench_ov_overhead.py``), a few percent of a millisecond stitch that
    benchmark_app does not pay.
    ``compute_ns`` is the request's own inference time of the last call (``InferRequest.latency``,
    what benchmark_app reports), next to the wall time the caller sees."""

    compute_source = COMPUTE_SOURCE

    def __init__(self, request, output) -> None:
        self.request, self.output = request, output
        self._bound: np.ndarray | None = None   # held, so its memory stays valid while bound
        self._key: tuple | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x is not self._bound:
            key = (x.__array_interface__["data"][0], x.shape)
            if key != self._key:   # a view of the same memory needs no new binding
                import openvino as ov

                self.request.set_input_tensor(ov.Tensor(x, shared_memory=True))
                self._key = key
            self._bound = x
        self.request.infer(share_outputs=True)
        return np.array(self.request.get_tensor(self.output).data, dtype=np.float32, copy=True)

    def compute_ns(self) -> int | None:
        ms = float(self.request.latency)
        return int(ms * 1e6) if ms > 0 else None


def _type_name(value) -> str:
    get = getattr(value, "get_type_name", None)
    return get() if callable(get) else str(value)


class OpenVinoSession:
    """An ONNX-Runtime-like ``run(output_names, feeds)`` over one compiled OpenVINO model."""

    def __init__(self, xml: Path, weights: Path, settings: dict, *, threads: int | None = None,
                 performance_hint: str | None = None, cpu_pinning: bool | None = None) -> None:
        core = _core()
        device = settings.get("device") or "CPU"
        if not any(d == device or d.startswith(device + ".") for d in core.available_devices):
            raise BundleError(f"OpenVINO device {device} is not present here (found: "
                              f"{', '.join(core.available_devices) or 'none'})",
                              hint=f"run the bundle on a machine with the {device} and its driver")
        # The hint the latencies were measured with (manifest session: the target's or --tune's
        # choice) wins over the one recorded at compile time.
        config: dict = {"PERFORMANCE_HINT": performance_hint or settings.get("performance_hint") or "LATENCY"}
        if settings.get("inference_precision_hint"):
            config["INFERENCE_PRECISION_HINT"] = settings["inference_precision_hint"]
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cpu_pinning is not None and device == "CPU":
            config["ENABLE_CPU_PINNING"] = bool(cpu_pinning)
        try:
            model = core.read_model(str(xml), str(weights))
            self.compiled = core.compile_model(model, device, config)
        except Exception as err:  # OpenVINO raises RuntimeError with multi-line text
            raise BundleError(f"OpenVINO cannot load {xml.name}: {str(err).strip().splitlines()[0]}",
                              hint="check the openvino version the bundle README names") from None
        self._output = self.compiled.outputs[0]
        shape = self.compiled.inputs[0].get_partial_shape()
        self._static_batch = None if shape.is_dynamic else int(shape[0].get_length())
        self._local = threading.local()
        self.info = {"engine": "openvino", "version": openvino_version(), "device": device,
                     "config": {k: str(v) for k, v in config.items()},
                     "inference_precision": _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))}

    def _request(self) -> SyncRequest:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = SyncRequest(self.compiled.create_infer_request(), self._output)
        return req

    compute_source = COMPUTE_SOURCE

    def compute_ns(self) -> int | None:
        """The calling thread's last ``run`` as OpenVINO measured it (see SyncRequest): the sum
        over its slices when a static-batch IR ran a larger batch in several inferences."""
        return getattr(self._local, "compute", None)

    def run(self, output_names, feeds: dict):
        (x,) = feeds.values()
        x = np.ascontiguousarray(x, dtype=np.float32)
        req = self._request()
        step = self._static_batch or len(x)
        if step >= len(x):
            out = req(x)
            self._local.compute = req.compute_ns()
            return [out]
        outs, total = [], 0
        for i in range(0, len(x), step):
            outs.append(req(x[i:i + step]))
            total += req.compute_ns() or 0
        self._local.compute = total or None
        return [outs[0] if len(outs) == 1 else np.concatenate(outs)]
