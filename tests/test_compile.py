"""The compile stage over an export folder, on real ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esta_export.cli import main
from esta_export.compile import compile_export, load_artifact
from esta_export.errors import InputError, StitchError, TargetError
from esta_export.fsutil import sha256_file
from tiny_export import calibration, make_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("e") / "export")


def test_cpu_compile_summary_and_resume(export, tmp_path):
    out = tmp_path / "cpu"
    s = compile_export(export, "cpu", out)
    on_disk = json.loads((out / "compile.json").read_text())
    assert on_disk == json.loads(json.dumps(s))
    assert s["schema"] == "esta-export/compile" and s["backend"] == "onnxruntime"
    assert s["engines_built"] and not s["device_build_required"] and not s["failed"]
    assert [a["id"] for a in s["artifacts"]] == [0, 1]
    for a in s["artifacts"]:
        assert a["validation"]["tier"] == 3 and a["validation"]["passed"]
        assert a["sha256"] == sha256_file(out / a["path"])
        assert all(sha256_file(out / f) == h for f, h in a["files"].items())
        assert a["flops"] and not a["reused"]
    ref = np.load(out / "reference.npz")
    assert ref["x"].shape == (32, 3, 32, 32) and ref["ref_1"].shape == (32, 10)
    with load_artifact(out, 1) as r:
        np.testing.assert_allclose(r.infer(ref["x"]), ref["ref_1"], rtol=1e-4, atol=1e-4)
    again = compile_export(export, "cpu", out)
    assert all(a["reused"] for a in again["artifacts"])
    (out / again["artifacts"][0]["path"]).write_bytes(b"corrupt")  # damaged artifact: rebuilt
    third = compile_export(export, "cpu", out)
    assert [a["reused"] for a in third["artifacts"]] == [False, True]
    assert not any(a["reused"] for a in compile_export(export, "cpu", out, fresh=True)["artifacts"])


def _user_target(tmp_path, base, validation):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "targets"
    p = tmp_path / f"{base}-custom.toml"
    p.write_text((root / f"{base}.toml").read_text() + "\n[validation]\n" + validation)
    return str(p)


def test_int8_with_labelled_calibration(export, tmp_path):
    from esta_export.compile import reference_logits

    x = calibration(64)
    # Labels = the fp32 model's own predictions: reference accuracy 100%, drop = 1 - agreement.
    y = reference_logits(export / "stitches/stitch_000.onnx", x).argmax(1)
    data = tmp_path / "calib.npz"
    np.savez(data, x=x, y=y)
    lenient = _user_target(tmp_path, "cpu-int8",
                           "int8_min_top1_agreement = 0.5\nmax_accuracy_drop = 0.5\n")
    s = compile_export(export, lenient, tmp_path / "a", calibration=data, stitch_ids=[0])
    v = s["artifacts"][0]["validation"]
    assert s["reference_inputs"]["labelled"] and v["passed"] and v["reference_accuracy"] == 1.0
    assert v["accuracy_drop"] == pytest.approx(1 - v["top1_agreement"])
    strict = _user_target(tmp_path, "cpu-int8", "max_accuracy_drop = -0.01\n")
    s = compile_export(export, strict, tmp_path / "b", calibration=data, stitch_ids=[0])
    assert not s["artifacts"] and "accuracy_drop" in s["failed"][0]["reason"]


def test_openvino_fp32_and_int8(export, tmp_path):
    pytest.importorskip("openvino")
    s = compile_export(export, "intel-cpu", tmp_path / "ov", calibration=calibration(128))
    assert len(s["artifacts"]) == 2 and s["runtime"]["runtime"] == "openvino"
    s8 = compile_export(export, "intel-cpu", tmp_path / "ov8", precision="int8",
                        calibration=calibration(128))
    assert s8["precision"] == "int8"
    assert len(s8["artifacts"]) + len(s8["failed"]) == 2
    for a in s8["artifacts"]:
        assert a["validation"]["passed"] and a["info"]["quantizer"] == "nncf"


def test_jetson_target_writes_device_kit(export, tmp_path, capsys):
    out = tmp_path / "orin"
    rc = main(["compile", str(export), "--target", "jetson-orin", "--out", str(out)])
    text = capsys.readouterr().out
    s = json.loads((out / "compile.json").read_text())
    if s["engines_built"]:
        pytest.skip("running on the device itself")
    assert rc == 0 and s["device_build_required"] and not s["verified_on_hardware"]
    assert "engines NOT built" in text and "README_DEVICE.md" in text
    assert "not verified on hardware" in text
    assert all(a["validation"]["passed"] is None for a in s["artifacts"])
    assert (out / "kit.json").is_file() and (out / "build_engines.py").is_file()


def test_failing_stitch_is_reported_and_others_go_on(tmp_path):
    e = make_export(tmp_path / "export")
    (e / "stitches/stitch_001.onnx").write_bytes(b"not an onnx graph")
    s = compile_export(e, "cpu", tmp_path / "out")
    assert [a["id"] for a in s["artifacts"]] == [0]
    assert s["failed"][0]["id"] == 1 and s["failed"][0]["reason"]


def test_refusals(export, tmp_path, capsys):
    jp5 = make_export(tmp_path / "e17")
    with pytest.raises(TargetError, match="--opset 16"):
        compile_export(jp5, "jetson-orin-jp5", tmp_path / "x")
    with pytest.raises(TargetError, match="does not support precision"):
        compile_export(export, "cpu", tmp_path / "x", precision="fp16")
    with pytest.raises(StitchError, match=r"\[7\]"):
        compile_export(export, "cpu", tmp_path / "x", stitch_ids=[7])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(InputError, match="shape"):
        compile_export(export, "cpu", tmp_path / "x", calibration=bad)
    assert main(["compile", str(tmp_path / "nowhere"), "--target", "cpu"]) == 2
    assert main(["compile", str(export), "--target", "no-such-target"]) == 2
    err = capsys.readouterr().err
    assert "export folder not found" in err and "unknown target" in err
    assert not (tmp_path / "x" / "compile.json").exists()


def test_reference_and_runner_outputs_do_not_pin_the_session_arena(export):
    """ONNX Runtime returns outputs as views on its own buffers (base: a PyCapsule); compile keeps
    every stitch's reference, and the demo's compile grew past 20 GB holding 35 arenas. The
    reference and the backend runner hand out arrays that own their data."""
    from esta_export.backends import get_backend
    from esta_export.compile import reference_logits
    from esta_export.targets import load_target

    onnx_path = next(export.glob("stitches/*.onnx"))
    x = np.zeros((2, 3, 32, 32), np.float32)
    ref = reference_logits(onnx_path, x)
    assert ref.flags.owndata and ref.base is None
    runner = get_backend("onnxruntime").load(onnx_path, load_target("cpu"))
    out = runner.infer(x)
    runner.close()
    assert out.flags.owndata and out.base is None
