"""Run a built TensorRT engine: float32 NCHW in, float32 logits out (name-based tensor API, v3).

TensorRT and cuda-python are imported when an engine is deserialized, never at import time.
Written against TensorRT's documented Python API (8.5 to 10.x); NOT verified on hardware.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .device import cudart


def check_cuda(result):
    """cuda-python returns ``(err, *values)``: raise on an error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else (rest or None)


def deserialize(engine_path: Path):
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise RuntimeError(f"{Path(engine_path).name} does not deserialize with TensorRT "
                           f"{trt.__version__}; rebuild it on this device")
    # The runtime must outlive the engine it made.
    return _Held(engine, runtime)


class _Held:
    """An engine with the runtime that deserialized it (TensorRT needs the runtime alive)."""

    def __init__(self, engine: "trt.ICudaEngine", runtime: "trt.Runtime") -> None:  # noqa: F821
        self.engine, self.trt_runtime = engine, runtime


class TrtRunner:
    """Synchronous runner over one engine (a path, or an engine :func:`deserialize` returned and
    perhaps refitted). Each call copies the input host->device and the logits device->host."""

    def __init__(self, engine) -> None:
        import numpy as np
        import tensorrt as trt

        held = deserialize(engine) if isinstance(engine, (str, Path)) else engine
        self._held = held
        self.np, self.cudart = np, cudart()
        self.engine = held.engine
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.input = next(n for n in names if mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = check_cuda(self.cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                check_cuda(self.cudart.cudaFree(ptr))
            ptr = check_cuda(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, x):
        np, rt = self.np, self.cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape(self.input, tuple(x.shape))
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=np.float32)
        d_in, d_out = self._buffer(self.input, x.nbytes), self._buffer(self.output, out.nbytes)
        self.context.set_tensor_address(self.input, d_in)
        self.context.set_tensor_address(self.output, d_out)
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_cuda(rt.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        check_cuda(rt.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self.stream))
        check_cuda(rt.cudaStreamSynchronize(self.stream))
        return out

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __enter__(self) -> "TrtRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


class EngineSession:
    """A built, validated engine behind the call the bundle runtime makes on an ONNX Runtime
    session: ``run(None, {name: x}) -> [logits]``. One execution context and stream per engine,
    so calls are serialized; batches above the optimization profile's maximum run in slices.
    ``runner`` is a :class:`TrtRunner` (its engine refitted first when it was built stripped)."""

    def __init__(self, ready: dict, runner: TrtRunner) -> None:
        self.plan, self.meta = ready["plan"], ready["meta"]
        self.max_batch = max_batch(self.plan)
        self._runner = runner
        self._lock = threading.Lock()

    def run(self, output_names, feeds: dict):
        (x,) = feeds.values()
        with self._lock:
            return [infer_in_chunks(self._runner, x, self.max_batch)]

    def close(self) -> None:
        runner, self._runner = getattr(self, "_runner", None), None
        if runner is not None:
            runner.close()

    def __del__(self) -> None:  # device buffers go with the last reference (Bundle.unload)
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may already be gone
            pass
