"""int8 that is exact on the CPU it runs on, whatever CPU the tests run on.

ONNX Runtime's and OpenVINO's u8 x s8 kernels saturate on x86 without VNNI/AMX. Both code paths
(7-bit weights, exact anywhere; full-range weights, exact only with int8 dot products) are taken
here by forcing the CPU flags (ESTA_CPU_FLAGS) and the target's declared ``cpu_flags``. Accuracy
is asserted for the full-range path only when the real CPU has int8 dot products: it may saturate
elsewhere, which is the point.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from esta_export.backends import get_backend
from esta_export.errors import TargetError
from esta_export.runtime.cpu import ENV_VAR, INT8_DOT_FLAGS, cpu_features, int8_plan, int8_problem
from esta_export.targets import load_target
from esta_export.validate import validate
from tiny_export import calibration, export_onnx

REAL_INT8_DOT = cpu_features(environ={})["int8_dot"]
NO_VNNI = "avx2"
VNNI = "avx2,avx512f,avx512_vnni"


def _features(flags: str) -> dict:
    return cpu_features(environ={ENV_VAR: flags})


def _declaring(name: str, flags) -> object:
    t = load_target(name)
    return dataclasses.replace(t, device=dataclasses.replace(t.device, cpu_flags=flags))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    p = export_onnx(tmp_path_factory.mktemp("g") / "s.onnx", depth=2)
    x = calibration(96)
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    return p, x, ref


# ---- the decision ----------------------------------------------------------------------------
@pytest.mark.parametrize("host,declared,full", [
    (VNNI, ("avx2", "avx512_vnni"), True),     # both exact: full range
    (VNNI, ("amx_int8",), True),
    (VNNI, None, False),                       # deployment CPU unknown
    (VNNI, ("avx2", "avx512f"), False),        # deployment CPU saturates
    (NO_VNNI, ("avx512_vnni",), False),        # validation here would saturate
    (NO_VNNI, None, False),
])
def test_int8_plan(host, declared, full):
    plan = int8_plan(declared, _features(host))
    assert plan["full_range"] is full
    assert plan["validated_on"]["flags"] == _features(host)["flags"]
    assert plan["validated_on"]["source"] == ENV_VAR and plan["reason"]
    assert plan["requires_any"] == (sorted(INT8_DOT_FLAGS) if full else [])


def test_int8_problem_on_device():
    full = int8_plan(["avx512_vnni"], _features(VNNI))
    reduced = int8_plan(None, _features(VNNI))
    assert int8_problem(full, _features(VNNI)) is None
    assert int8_problem(full, _features("amx_int8,avx2")) is None
    msg = int8_problem(full, _features(NO_VNNI))
    assert "avx512_vnni" in msg and "saturate" in msg and "\n" not in msg
    assert int8_problem(reduced, _features(NO_VNNI)) is None  # 7-bit weights: exact anywhere
    assert int8_problem(None, _features(NO_VNNI))  # unrecorded: assumed full range


def test_target_cpu_flags_are_checked(tmp_path):
    base = (load_target("cpu-int8").source)
    text = open(base).read().replace('arch = "any"', 'arch = "x86_64"\ncpu_flags = ["avx2", "avx512_vnni"]')
    good = tmp_path / "good.toml"
    good.write_text(text)
    assert load_target(str(good)).device.cpu_flags == ("avx2", "avx512_vnni")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('"avx512_vnni"', '"avx512vnni"'))
    with pytest.raises(TargetError, match="avx512vnni"):
        load_target(str(bad))
    arm = tmp_path / "arm.toml"
    arm.write_text(text.replace('arch = "x86_64"', 'arch = "aarch64"'))
    with pytest.raises(TargetError, match="aarch64"):
        load_target(str(arm))


# ---- ONNX Runtime ---------------------------------------------------------------------------
def _ort_weights(path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    return [numpy_helper.to_array(i) for i in m.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]


@pytest.mark.parametrize("host,declared", [(NO_VNNI, ("avx512_vnni",)), (VNNI, None), (VNNI, ("avx2",))])
def test_ort_reduced_range_is_exact_anywhere(graph, tmp_path, monkeypatch, host, declared):
    p, x, ref = graph
    monkeypatch.setenv(ENV_VAR, host)
    t = _declaring("cpu-int8", declared)
    b = get_backend("onnxruntime")
    art = b.compile(p, t, tmp_path, "int8", calibration=x)
    isa = art.info["int8_isa"]
    assert isa["setting"] == {"reduce_range": True} and art.info["reduce_range"] is True
    assert isa["validated_on"]["flags"] == _features(host)["flags"]
    ws = _ort_weights(tmp_path / art.path)
    assert ws and max(int(np.abs(w.astype(np.int32)).max()) for w in ws) <= 64  # 7-bit: no int16 overflow
    with b.load(tmp_path / art.path, t) as r:  # exact on this CPU, whichever it is
        v = validate("int8", r.infer(x), ref, t.validation)
    assert v["passed"], v


def test_ort_full_range_when_both_cpus_have_vnni(graph, tmp_path, monkeypatch):
    p, x, ref = graph
    monkeypatch.setenv(ENV_VAR, VNNI)
    t = _declaring("cpu-int8", ("avx2", "avx512_vnni"))
    b = get_backend("onnxruntime")
    art = b.compile(p, t, tmp_path, "int8", calibration=x)
    isa = art.info["int8_isa"]
    assert isa["setting"] == {"reduce_range": False} and isa["requires_any"]
    ws = _ort_weights(tmp_path / art.path)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in ws) > 64  # full 8-bit range
    if REAL_INT8_DOT:  # never judge a saturating setting on a CPU that may saturate
        with b.load(tmp_path / art.path, t) as r:
            assert validate("int8", r.infer(x), ref, t.validation)["passed"]


# ---- OpenVINO / NNCF ------------------------------------------------------------------------
def _ov_weight_range(path) -> int:
    ov = pytest.importorskip("openvino")
    m = ov.Core().read_model(str(path))
    vals = [int(np.abs(op.get_data().astype(np.int32)).max()) for op in m.get_ops()
            if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
            and len(op.shape) >= 2]
    assert vals, "no int8 weight constants in the IR"
    return max(vals)


@pytest.mark.parametrize("host,declared,fix", [(NO_VNNI, ("avx512_vnni",), "ENABLE"),
                                               (VNNI, None, "ENABLE"),
                                               (VNNI, ("avx512_vnni",), "DISABLE")])
def test_nncf_overflow_fix_follows_the_cpus(graph, tmp_path, monkeypatch, host, declared, fix):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    p, x, ref = graph
    monkeypatch.setenv(ENV_VAR, host)
    t = _declaring("intel-cpu-int8", declared)
    b = get_backend("openvino")
    art = b.compile(p, t, tmp_path, "int8", calibration=x)
    isa = art.info["int8_isa"]
    assert isa["setting"] == {"overflow_fix": fix, "inference_precision_hint": "f32"}
    assert art.info["inference_precision_hint"] == "f32"  # bf16 on AMX otherwise
    wmax = _ov_weight_range(tmp_path / art.path)
    assert (wmax <= 64) if fix == "ENABLE" else (wmax > 64)
    if fix == "ENABLE" or REAL_INT8_DOT:
        with b.load(tmp_path / art.path, t) as r:
            assert r.info["inference_precision"] == "f32"
            v = validate("int8", r.infer(x), ref, t.validation)
        assert v["passed"], v


# ---- compile.json ---------------------------------------------------------------------------
def test_compile_records_isa_and_does_not_reuse_across_cpus(tmp_path, monkeypatch):
    import json

    from esta_export.compile import compile_export
    from tiny_export import make_export

    export = make_export(tmp_path / "export")
    monkeypatch.setenv(ENV_VAR, VNNI)
    s = compile_export(export, "cpu-int8", tmp_path / "c", calibration=calibration(32), stitch_ids=[0])
    (a,) = s["artifacts"]
    assert a["int8_isa"]["setting"] == {"reduce_range": True}
    assert a["int8_isa"]["calibrated_on"]["flags"] == ["avx2", "avx512_vnni", "avx512f"]
    assert json.loads((tmp_path / "c" / "compile.json").read_text())["artifacts"][0]["int8_isa"]
    assert compile_export(export, "cpu-int8", tmp_path / "c", calibration=calibration(32),
                          stitch_ids=[0])["artifacts"][0]["reused"]
    monkeypatch.setenv(ENV_VAR, NO_VNNI)  # the same folder compiled on another CPU: redone
    again = compile_export(export, "cpu-int8", tmp_path / "c", calibration=calibration(32), stitch_ids=[0])
    assert not again["artifacts"][0]["reused"]
    assert again["artifacts"][0]["int8_isa"]["validated_on"]["flags"] == ["avx2"]
    fp32 = compile_export(export, "cpu", tmp_path / "f", stitch_ids=[0])
    assert "int8_isa" not in fp32["artifacts"][0]
