"""ONNX Runtime backend on real ONNX Runtime: offline fp32 graph, QDQ int8, provider check."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from esta_export.backends import get_backend
from esta_export.backends.onnxruntime import capabilities
from esta_export.errors import BackendUnavailableError, CompileError
from esta_export.targets import Runtime, load_target
from esta_export.validate import validate
from tiny_export import calibration, export_onnx


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    p = export_onnx(tmp_path_factory.mktemp("g") / "s.onnx", depth=2)
    x = calibration(64)
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    return p, x, ref


def test_describe_and_capabilities():
    d = get_backend("onnxruntime").describe()
    assert d["runtime"] == "onnxruntime" and d["version"] == ort.__version__
    assert "CPUExecutionProvider" in d["capabilities"]["available_providers"]
    assert capabilities("1.16.3")["int4_weights"] is False
    with pytest.raises(BackendUnavailableError, match="older"):
        capabilities("1.10.0")


def test_fp32_offline_optimized_validates(graph, tmp_path):
    p, x, ref = graph
    t = load_target("cpu")
    b = get_backend("onnxruntime")
    art = b.compile(p, t, tmp_path, "fp32")
    assert art.built and art.info["optimization_level"] == "extended"
    # Large initializers live in the artifact's own external data file; loading by path works.
    assert "model.onnx.data" in art.files and (tmp_path / "model.onnx.data").stat().st_size > 0
    with b.load(tmp_path / art.path, t) as r:
        assert r.info["providers"][0] == "CPUExecutionProvider"
        v = validate("fp32", r.infer(x), ref, t.validation)
    assert v["passed"], v


def test_int8_qdq_validates(graph, tmp_path):
    p, x, ref = graph
    t = load_target("cpu-int8")
    b = get_backend("onnxruntime")
    art = b.compile(p, t, tmp_path, "int8", calibration=x[:32])
    ops = {n.op_type for n in onnx.load(str(tmp_path / art.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    with b.load(tmp_path / art.path, t) as r:
        v = validate("int8", r.infer(x), ref, t.validation)
    assert v["passed"] and v["top1_agreement"] >= 0.9, v
    assert v["rel_error"] > 1e-4  # it really is quantized, not the fp32 graph


def test_int8_needs_calibration(graph, tmp_path):
    with pytest.raises(CompileError, match="calibration"):
        get_backend("onnxruntime").compile(graph[0], load_target("cpu-int8"), tmp_path, "int8")


def test_silent_provider_fallback_is_an_error(graph, tmp_path):
    p = graph[0]
    t = load_target("cpu")
    gpu = dataclasses.replace(t, runtime=Runtime(providers=("CUDAExecutionProvider",
                                                            "CPUExecutionProvider")))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present: no fallback to provoke")
    with pytest.raises(BackendUnavailableError, match="fell back to CPUExecutionProvider"):
        get_backend("onnxruntime").load(p, gpu)
