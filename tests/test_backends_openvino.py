"""OpenVINO backend on real OpenVINO/NNCF: IR, pinned inference precision, NNCF int8."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")

from esta_export.backends import get_backend  # noqa: E402
from esta_export.backends.openvino import capabilities, inference_precision  # noqa: E402
from esta_export.errors import BackendUnavailableError  # noqa: E402
from esta_export.targets import load_target  # noqa: E402
from esta_export.validate import validate  # noqa: E402
from tiny_export import calibration, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    p = export_onnx(tmp_path_factory.mktemp("g") / "s.onnx", depth=2)
    x = calibration(128)
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    return p, x, ref


def test_describe():
    d = get_backend("openvino").describe()
    assert d["runtime"] == "openvino" and "CPU" in d["capabilities"]["available_devices"]
    assert capabilities("2024.6.0")["npu_plugin"] and not capabilities("2023.3.0")["npu_plugin"]


def test_fp32_ir_pins_f32_and_validates(graph, tmp_path):
    p, x, ref = graph
    t = load_target("intel-cpu")
    b = get_backend("openvino")
    art = b.compile(p, t, tmp_path, "fp32")
    assert {"model.xml", "model.bin"} == set(art.files) and art.info["ir_weights"] == "fp32"
    with b.load(tmp_path / art.path, t) as r:
        assert r.info["config"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert r.info["inference_precision"] == "f32"  # read back from the compiled model
        v = validate("fp32", r.infer(x), ref, t.validation)
    assert v["passed"], v


def test_int8_nncf_validates(graph, tmp_path):
    p, x, ref = graph
    t = load_target("intel-cpu-int8")
    b = get_backend("openvino")
    art = b.compile(p, t, tmp_path, "int8", calibration=x)
    assert art.info["quantizer"] == "nncf" and art.info["calibration_samples"] == 128
    model = ov.Core().read_model(str(tmp_path / art.path))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    with b.load(tmp_path / art.path, t) as r:
        assert r.info["precision"] == "int8" and r.info["config"]["INFERENCE_PRECISION_HINT"] == "f32"
        v = validate("int8", r.infer(x), ref, t.validation)
    assert v["passed"], v


def test_bf16_hint_is_recorded(graph, tmp_path):
    p, x, ref = graph
    t = load_target("intel-cpu")
    b = get_backend("openvino")
    art = b.compile(p, t, tmp_path, "bf16")
    with b.load(tmp_path / art.path, t) as r:
        assert r.info["config"]["INFERENCE_PRECISION_HINT"] == "bf16"
        # The plugin may refuse bf16 on CPUs without it; whatever it uses is what we record.
        assert r.info["inference_precision"] in ("bf16", "f32")
        v = validate("bf16", r.infer(x), ref, t.validation)
    assert v["cosine_min"] > 0.99


def test_npu_static_shape_and_missing_device(graph, tmp_path):
    t = load_target("intel-npu")
    b = get_backend("openvino")
    art = b.compile(graph[0], t, tmp_path, "fp16")
    assert art.info["static_shape"] == [1, 3, 32, 32] and art.info["ir_weights"] == "fp16"
    model = ov.Core().read_model(str(tmp_path / art.path))
    assert model.inputs[0].get_partial_shape().is_static
    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("an NPU is present")
    with pytest.raises(BackendUnavailableError, match="NPU is not present"):
        b.load(tmp_path / art.path, t)


def test_int8_precision_hint_per_device():
    assert inference_precision(load_target("intel-cpu"), "int8") == "f32"
    assert inference_precision(load_target("intel-gpu"), "int8") == "f16"
    assert inference_precision(load_target("intel-gpu"), "fp16") == "f16"
