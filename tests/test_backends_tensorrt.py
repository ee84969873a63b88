"""TensorRT backend: everything that runs without TensorRT (capability table, builder decisions,
trtexec lines, --exportTimes parsing, the device build kit), plus marked tests that need it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esta_export.backends import get_backend
from esta_export.runtime import gates
from esta_export.runtime.tensorrt import device, runner, validation
from esta_export.backends.tensorrt import build_plan, capabilities, on_target_device, trtexec_command
from esta_export.errors import BackendUnavailableError, CompileError
from esta_export.targets import load_target
from tiny_export import calibration, export_onnx

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _plan(name, precision="fp16"):
    return build_plan(load_target(name), precision, input_name="pixels", chw=(3, 224, 224),
                      onnx="s/model.onnx", engine="s/model.plan", layer_info="s/layers.json")


def test_capability_table_across_versions():
    assert capabilities("8.5.2")["explicit_batch_flag"] and not capabilities("8.5.2")["layernorm_op"]
    assert capabilities("8.5.2")["max_opset"] == 16
    assert capabilities("8.6.2")["builder_optimization_level"]
    ten = capabilities("10.3.0")
    assert not ten["explicit_batch_flag"] and ten["strip_plan"] and not ten["build_engine_api"]
    assert ten["int8_calibrator"] == "deprecated" and capabilities("10.0.1")["int8_calibrator"] == "supported"
    with pytest.raises(BackendUnavailableError):
        capabilities("8.4.1")


def test_builder_decisions_per_target():
    gpu = _plan("jetson-orin")
    assert gpu["fp16"] and not gpu["int8"] and gpu["dla_core"] is None
    assert gpu["profile"]["pixels"] == {"min": [1, 3, 224, 224], "opt": [1, 3, 224, 224],
                                        "max": [8, 3, 224, 224]}
    assert gpu["workspace_bytes"] == 4096 << 20 and not gpu["caps"]["explicit_batch_flag"]
    dla = _plan("jetson-orin-dla", "int8")
    assert dla["dla_core"] == 0 and dla["gpu_fallback"] and dla["int8"] and dla["fp16"]
    assert dla["int8_mode"] == "explicit_qdq"
    assert dla["profile"]["pixels"]["min"] == dla["profile"]["pixels"]["max"] == [1, 3, 224, 224]
    jp5 = _plan("jetson-orin-jp5")
    assert jp5["caps"]["explicit_batch_flag"] and jp5["tensorrt_planned"] == "8.5.2"
    with pytest.raises(CompileError, match="bf16"):
        _plan("jetson-orin", "bf16")


def test_trtexec_command_lines():
    cmd = trtexec_command(_plan("jetson-orin-dla"), "s/times.json")
    assert cmd[0].endswith("trtexec")
    for flag in ("--onnx=s/model.onnx", "--saveEngine=s/model.plan", "--fp16",
                 "--useDLACore=0", "--allowGPUFallback", "--minShapes=pixels:1x3x224x224",
                 "--maxShapes=pixels:1x3x224x224", "--timingCacheFile=timing.cache",
                 "--exportTimes=s/times.json", "--exportLayerInfo=s/layers.json",
                 "--profilingVerbosity=detailed", "--memPoolSize=workspace:2048"):
        assert flag in cmd
    gpu = trtexec_command(_plan("jetson-orin", "int8"), "t.json")
    assert "--int8" in gpu and "--maxShapes=pixels:8x3x224x224" in gpu
    assert not any(c.startswith("--useDLACore") for c in gpu)


def _times(n=50, seed=0):
    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    for _ in range(n):
        h2d, comp, d2h = 0.05, float(rng.uniform(2.0, 3.0)), 0.01
        rows.append({"startEnqMs": t, "endEnqMs": t + 0.1, "startH2dMs": t + 0.1,
                     "endH2dMs": t + 0.1 + h2d, "startComputeMs": t + 0.1 + h2d,
                     "endComputeMs": t + 0.1 + h2d + comp, "startD2hMs": t + 0.1 + h2d + comp,
                     "endD2hMs": t + 0.1 + h2d + comp + d2h, "h2dMs": h2d, "computeMs": comp,
                     "d2hMs": d2h, "latencyMs": h2d + comp + d2h})
        t += 4.0
    return rows


def test_engine_key_refuses_other_setups():
    plan = _plan("jetson-orin")
    fp = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "l4t": "R36.4"}
    key = device.engine_key(plan, "ab" * 32, fp)
    assert device.stale_fields(key, key) == []
    other = device.engine_key(plan, "ab" * 32, dict(fp, tensorrt="8.5.2", gpu="RTX 4090"))
    assert set(device.stale_fields(key, other)) == {"tensorrt", "gpu"}
    assert device.stale_fields(key, device.engine_key(plan, "cd" * 32, fp)) == ["onnx_sha256"]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT installed: the kit path is not taken")
def test_off_device_compile_writes_a_kit(tmp_path):
    onnx_path = export_onnx(tmp_path / "g" / "s.onnx")
    t = load_target("jetson-orin")
    assert on_target_device(t) == (False, "TensorRT is not installed here")
    b = get_backend("tensorrt")
    assert not b.available() and b.describe()["version"] is None
    d = tmp_path / "out" / "stitch_000"
    art = b.compile(onnx_path, t, d, "fp16")
    assert not art.built and art.info["device_build_required"]
    assert {"model.onnx", "build_plan.json"} <= set(art.files)
    plan = json.loads((d / "build_plan.json").read_text())
    assert plan["timing_cache"] == "../timing.cache" and plan["profile"]["pixels"]["max"][0] == 8
    files = b.finalize(tmp_path / "out", t, [{"id": 0, "dir": "stitch_000"}])
    assert set(files) == {"kit.json", "build_engines.py", "esta_runtime", "trtexec.sh", "README_DEVICE.md"}
    out = tmp_path / "out"
    kit = json.loads((out / "kit.json").read_text())
    assert kit["tensorrt_planned"] == "10.3" and kit["plans"][0]["onnx"] == "stitch_000/model.onnx"
    # build_engines.py is a launcher for the runtime's TensorRT package, shipped next to it as is
    import esta_export.runtime.tensorrt.kit as kit_module
    launcher = (out / "build_engines.py").read_text()
    assert "from esta_runtime.tensorrt.kit import main" in launcher and len(launcher.splitlines()) < 25
    assert (out / "esta_runtime" / "tensorrt" / "kit.py").read_bytes() == Path(kit_module.__file__).read_bytes()
    assert (out / "esta_runtime" / "gates.py").is_file()
    assert kit["plans"][0]["weights"] == "stripped" and "--stripWeights" in (out / "trtexec.sh").read_text()
    readme = (out / "README_DEVICE.md").read_text()
    assert "steps must run there" in readme and "nvpmodel -m 0" in readme and "NOT build" in readme
    assert "--saveEngine=stitch_000/model.plan" in (out / "trtexec.sh").read_text()
    # The launcher runs the kit's own runtime copy (not esta-export) and says what is missing.
    (out / "esta_runtime" / "tensorrt" / "marker.py").write_text("print('the kit copy ran')\n")
    with open(out / "esta_runtime" / "tensorrt" / "kit.py", "a") as f:
        f.write("\nfrom . import marker  # noqa\n")
    r = subprocess.run([sys.executable, "-I", str(out / "build_engines.py"), str(out / "kit.json")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "python3-libnvinfer" in r.stderr and "the kit copy ran" in r.stdout
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        b.load(d / "model.plan", t)


def test_kit_int8_graph_has_symmetric_qdq(tmp_path):
    import onnx
    from onnx import numpy_helper

    onnx_path = export_onnx(tmp_path / "g" / "s.onnx")
    art = get_backend("tensorrt").compile(onnx_path, load_target("jetson-orin"), tmp_path / "o",
                                          "int8", calibration=calibration(16))
    g = onnx.load(str(tmp_path / "o" / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    zps = [inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # TensorRT: symmetric int8
    assert art.info["qdq"]["activations"] == "int8 symmetric"


def test_jp5_refuses_layernorm_op(tmp_path):
    onnx_path = export_onnx(tmp_path / "s.onnx", opset=16)  # opset 16: LayerNorm decomposed by torch
    get_backend("tensorrt").compile(onnx_path, load_target("jetson-orin-jp5"), tmp_path / "a", "fp16")
    onnx17 = export_onnx(tmp_path / "s17.onnx", opset=17)
    with pytest.raises(CompileError, match="opset <= 16"):
        get_backend("tensorrt").compile(onnx17, load_target("jetson-orin-jp5"), tmp_path / "b", "fp16")


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="needs the TensorRT Python package and an NVIDIA GPU")
def test_build_and_run_engine_on_gpu(tmp_path):
    onnx_path = export_onnx(tmp_path / "s.onnx")
    t = load_target("nvidia-gpu")
    b = get_backend("tensorrt")
    art = b.compile(onnx_path, t, tmp_path / "stitch_000", "fp16")
    assert art.built
    x = calibration(4)
    with b.load(tmp_path / "stitch_000" / art.path, t) as r:
        assert r.infer(x).shape == (4, 10)


@pytest.mark.jetson
@pytest.mark.skipif(not Path("/etc/nv_tegra_release").exists(), reason="needs a Jetson Orin")
def test_dla_layer_report_on_jetson(tmp_path):
    onnx_path = export_onnx(tmp_path / "s.onnx")
    art = get_backend("tensorrt").compile(onnx_path, load_target("jetson-orin-dla"),
                                          tmp_path / "stitch_000", "fp16")
    assert art.info["engine"]["layers"]["layers"] > 0


# ---- on-device validation gates (the runtime's gate, and validate.py as its adapter) ----------
def _gate_cases():
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((32, 10)).astype(np.float32)
    flipped = ref.copy()
    flipped[:3] = flipped[:3, ::-1]  # top-1 changes on 3 of 32 samples
    nan = ref.copy()
    nan[4, 2] = np.nan
    labels = ref.argmax(1).copy()
    labels[:5] = (labels[:5] + 1) % 10
    return {
        "identical": (ref.copy(), ref, None),
        "fp16 rounding": (ref.astype(np.float16).astype(np.float32), ref, None),
        "small noise": (ref + 1e-3 * rng.standard_normal(ref.shape).astype(np.float32), ref, None),
        "large noise": (ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32), ref, None),
        "flipped top-1": (flipped, ref, None),
        "nan": (nan, ref, None),
        "zero rows": (np.zeros_like(ref), ref, None),
        "labelled": (flipped, ref, labels),
    }


def _expected_pass(precision, case, th):
    """The verdicts worked out by hand, so the gate is checked against something it did not compute."""
    if case in ("nan", "zero rows"):
        return False
    if case == "identical":
        return True
    if case == "large noise":
        return False if precision in ("fp32", "fp16", "bf16") else None
    return None  # the rest depend on the thresholds: the figure-for-figure equality checks them


@pytest.mark.parametrize("case", list(_gate_cases()))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_device_gate_gives_validate_py_verdicts(case, precision):
    """build_engines.py gates engines with the runtime's gate; validate.py adapts the same code to
    the host's typed thresholds: figure for figure and verdict for verdict the same."""
    from dataclasses import asdict

    from esta_export import validate
    from esta_export.targets import Thresholds

    out, ref, labels = _gate_cases()[case]
    for th in (Thresholds(), Thresholds(fp16_min_cosine=0.9999, int8_min_top1_agreement=0.95,
                                        max_accuracy_drop=0.2, fp32_max_rel_error=1e-2)):
        want = validate.validate(precision, out, ref, th, labels)
        got = gates.gate(precision, gates.compare_logits(out, ref, labels), asdict(th))
        assert got == want
        if _expected_pass(precision, case, th) is not None:
            assert got["passed"] == _expected_pass(precision, case, th)
        if not want["passed"]:
            assert gates.describe_failure(got) == validate.describe_failure(want)


def test_device_gate_defaults_are_the_targets_defaults():
    from dataclasses import asdict

    from esta_export.targets import Thresholds

    assert gates.DEFAULT_THRESHOLDS == asdict(Thresholds())


def test_device_gate_refuses_a_wrong_shape_and_an_unknown_precision():
    ref = np.zeros((4, 10), np.float32)
    v = gates.gate("fp16", gates.compare_logits(np.zeros((4, 9)), ref))
    assert v["passed"] is False and v["metric"] == "shape" and "differs" in gates.describe_failure(v)
    with pytest.raises(ValueError):
        gates.gate("fp8", gates.compare_logits(ref, ref))
    from esta_export import validate
    from esta_export.errors import ValidationError
    with pytest.raises(ValidationError, match="differs from the reference"):
        validate.compare(np.zeros((4, 9)), ref)


def test_device_thresholds_and_reference_from_a_compile_folder(tmp_path):
    """The compile folder's kit (written by the backend) has no thresholds: build_engines.py reads
    the target's from compile.json and the reference next to kit.json."""
    (tmp_path / "compile.json").write_text(json.dumps(
        {"target_spec": {"validation": {"fp16_min_cosine": 0.99}}}))
    th, source = validation.kit_thresholds(tmp_path, {})
    assert th["fp16_min_cosine"] == 0.99 and th["int8_min_top1_agreement"] == 0.90
    assert source == "compile.json target"
    assert validation.kit_thresholds(tmp_path, {"thresholds": {"fp16_min_cosine": 0.5}})[0][
        "fp16_min_cosine"] == 0.5
    assert validation.kit_thresholds(tmp_path / "none", {})[1] == "esta-export defaults"
    assert validation.load_reference(tmp_path, {}) is None
    x = np.ones((3, 3, 8, 8), np.float32)
    np.savez(tmp_path / "reference.npz", x=x, ref_0=np.ones((3, 10)), ref_12=np.zeros((3, 10)))
    ref = validation.load_reference(tmp_path, {})
    assert sorted(ref["refs"]) == [0, 12] and ref["y"] is None and ref["x"].shape == (3, 3, 8, 8)


def test_engine_without_reference_is_not_validated(tmp_path):
    """No fp32 reference for a stitch: the verdict is 'not validated' (never a pass), without
    running anything."""
    (tmp_path / "e.plan").write_bytes(b"not an engine")
    plan = {"id": 3, "engine": "e.plan", "precision": "fp16",
            "profile": {"pixels": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [8, 3, 8, 8]}}}
    v = validation.validate_engine(plan, tmp_path, None, gates.DEFAULT_THRESHOLDS)
    assert v["passed"] is None and "no fp32 reference" in v["reason"]
    assert gates.describe_failure(v).startswith("not validated")
    assert runner.max_batch(plan) == 8


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="needs the TensorRT Python package and an NVIDIA GPU")
def test_build_engines_validates_against_reference_on_gpu(tmp_path):
    """On a GPU: build_engines.py builds, runs the engine on the reference and records a passing
    fp16 verdict in the .plan.json and validation.json."""
    import onnxruntime as ort

    onnx_path = export_onnx(tmp_path / "g" / "s.onnx")
    t = load_target("nvidia-gpu")
    b = get_backend("tensorrt")
    out = tmp_path / "kit"
    b.compile(onnx_path, t, out / "stitch_000", "fp16")
    b.finalize(out, t, [{"id": 0, "dir": "stitch_000"}])
    x = calibration(16)
    ref = ort.InferenceSession(str(onnx_path)).run(None, {"pixels": x})[0]
    np.savez(out / "reference.npz", x=x, ref_0=ref)
    from esta_export.runtime.tensorrt.kit import main as build_main

    assert build_main([str(out / "kit.json")]) == 0
    meta = json.loads((out / "stitch_000" / "model.plan.json").read_text())
    assert meta["validation"]["passed"] is True and meta["validation"]["metric"] == "cosine_min"
    summary = json.loads((out / "validation.json").read_text())
    assert summary["ok"] == 1 and summary["failed"] == 0
    assert build_main([str(out / "kit.json"), "--check"]) == 0
