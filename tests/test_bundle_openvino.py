"""OpenVINO bundles run with OpenVINO: IRs sharing one weights file, the pinned precision, the
same logits as the compiled artifacts, one-line refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed")

from esta_export.bundle.writer import write_bundle  # noqa: E402
from esta_export.compile import compile_export  # noqa: E402
from esta_export.runtime import Bundle, BundleError, IntegrityError  # noqa: E402
from tiny_export import calibration, export_onnx, make_export  # noqa: E402


def _family(root):
    export = make_export(root / "export", depths=(1, 2))
    # Same seed: stitch 1 shares stitch 0's patch embedding and first block, as stitches do.
    export_onnx(export / "stitches/stitch_001.onnx", depth=2, seed=0)
    return export


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    export = _family(root)
    s = compile_export(export, "intel-cpu", root / "compiled", calibration=calibration(16))
    assert len(s["artifacts"]) == 2, s["failed"]
    return write_bundle(None, "intel-cpu", root / "bundle", export_dir=export, compiled_dir=root / "compiled")


@pytest.fixture
def ov_copy(ov_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(ov_bundle, dst)
    return dst


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def test_ir_weights_stored_once(ov_bundle):
    m = _manifest(ov_bundle)
    w = m["weights"]
    assert w["format"] == "openvino-ir" and w["file"] == "models/openvino_weights.bin"
    assert (ov_bundle / w["file"]).stat().st_size == w["unique_bytes"] > 0
    assert w["unique_bytes"] < w["compiled_bytes_total"] and w["unique_consts"] < w["consts"]
    names = sorted(p.name for p in (ov_bundle / "models").iterdir())
    assert names == ["openvino_weights.bin", "stitch_000.xml", "stitch_001.xml"]  # no 0-byte weights.bin
    for e in m["stitches"]:
        assert e["artifact"]["format"] == "openvino-ir"
        assert e["artifact"]["openvino"]["inference_precision_hint"] == "f32"
        assert e["bundle_check"]["max_abs_diff_vs_compiled"] == 0.0
    assert f"{w['unique_bytes']:,} bytes" in (ov_bundle / "README.md").read_text()


def test_runs_with_openvino_and_matches_reference(ov_bundle):
    ref = np.load(ov_bundle.parent / "compiled" / "reference.npz")
    with Bundle.open(ov_bundle) as b:
        assert b.engine == "openvino"
        for s in b.stitches():
            out = b.run(ref["x"], stitch_id=s.id)
            scale = float(np.abs(ref[f"ref_{s.id}"]).max())
            assert float(np.abs(out - ref[f"ref_{s.id}"]).max()) / scale <= 1e-4
            info = b.load(s.id).info
            assert info["engine"] == "openvino" and info["inference_precision"] == "f32"
            assert info["config"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_threads_share_a_stitch(ov_bundle):
    import threading

    b = Bundle.open(ov_bundle)
    b.activate(0)
    x = np.load(ov_bundle.parent / "compiled" / "reference.npz")["x"][:4]
    want = b.run(x)
    errors = []

    def work():
        for _ in range(20):
            if not np.array_equal(b.run(x), want):
                errors.append("differs")

    ts = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors


def test_engine_choice_is_checked(ov_bundle):
    with pytest.raises(BundleError, match="OpenVINO IR"):
        Bundle.open(ov_bundle, engine="onnxruntime")


def test_tampered_shared_weights_refused_without_verify(ov_copy):
    w = ov_copy / "models" / "openvino_weights.bin"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="openvino_weights.bin"):
        Bundle.open(ov_copy, verify=False).load(0)


def test_app_without_openvino_is_one_line(ov_copy):
    code = ("import sys, runpy; sys.modules['openvino'] = None; sys.argv = ['app.py', '--runs', '1']; "
            f"runpy.run_path({str(ov_copy / 'app.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "openvino is not installed" in proc.stderr


def test_int8_ir_bundle_records_isa(tmp_path):
    pytest.importorskip("nncf")
    export = _family(tmp_path)
    s = compile_export(export, "intel-cpu-int8", tmp_path / "c", calibration=calibration(32))
    assert s["artifacts"], s["failed"]
    b = write_bundle(None, "intel-cpu-int8", tmp_path / "b", export_dir=export, compiled_dir=tmp_path / "c")
    m = _manifest(b)
    for e in m["stitches"]:
        assert e["int8_isa"]["setting"]["overflow_fix"] in ("ENABLE", "DISABLE")
        assert e["int8_isa"]["validated_on"]["flags"] is not None
    ref = np.load(b / "reference.npz")
    with Bundle.open(b) as bundle:
        for st in bundle.stitches():
            out = bundle.run(ref["x"], stitch_id=st.id)
            assert np.mean(out.argmax(1) == ref[f"ref_{st.id}"].argmax(1)) >= 0.9


def test_profile_device_times_the_openvino_engine(ov_bundle):
    proc = subprocess.run([sys.executable, "-I", str(ov_bundle / "profile_device.py"), "--runs", "3",
                           "--seconds", "0", "--stitches", "0"], capture_output=True, text=True, timeout=300,
                          cwd=ov_bundle.parent)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout.splitlines()[0])
    assert rec["runtime"] == "openvino" and rec["backend"] == "openvino" and rec["latency_ms"]["median"] > 0
    assert rec["session"]["stitch_0"]["INFERENCE_PRECISION_HINT"] == "f32"
    # OpenVINO's own time per call (what benchmark_app reports) beside the wall time: measured
    # inside each timed call, so its median cannot exceed the wall median.
    comp = rec["compute_ms"]
    assert "InferRequest.latency" in comp["source"] and comp["n"] == rec["latency_ms"]["n"]
    assert 0 < comp["median"] <= rec["latency_ms"]["median"]
    assert comp["overhead_ms"] == pytest.approx(rec["latency_ms"]["median"] - comp["median"])


def test_input_binding_follows_the_callers_buffer(ov_bundle):
    """The request binds the caller's buffer once (no per-call tensor): a new array, the same
    array changed in place, and a view of the same memory all give that input's logits."""
    ref = np.load(ov_bundle.parent / "compiled" / "reference.npz")
    x = np.ascontiguousarray(ref["x"][:1], dtype=np.float32)
    y = np.ascontiguousarray(ref["x"][1:2], dtype=np.float32)
    with Bundle.open(ov_bundle) as b:
        s = b.load(0)
        fresh = lambda a: s.run(None, {"pixels": a.copy()})[0]   # noqa: E731
        want_x, want_y = fresh(x), fresh(y)
        assert not np.allclose(want_x, want_y)
        buf = x.copy()
        assert np.array_equal(s.run(None, {"pixels": buf})[0], want_x)
        assert np.array_equal(s.run(None, {"pixels": y})[0], want_y)       # another array
        assert np.array_equal(s.run(None, {"pixels": buf})[0], want_x)     # back again
        buf[...] = y                                                        # same buffer, new data
        assert np.array_equal(s.run(None, {"pixels": buf})[0], want_y)
        assert np.array_equal(s.run(None, {"pixels": buf[:]})[0], want_y)  # a view of it
        del buf                                                              # still bound: kept alive
        assert np.array_equal(s.run(None, {"pixels": x})[0], want_x)
        assert s.compute_ns() > 0


def test_tuned_openvino_session_reaches_the_manifest_and_the_runtime(ov_copy):
    """The settings an OpenVINO latency was measured with ('profile --tune': threads and hint)
    are what the bundle runs with; before, the manifest fell back to the target's (ORT-shaped)
    session and the runtime used the plugin's default threads."""
    from esta_export.bundle.writer import _session

    tuned = {"threads": 1, "performance_hint": "THROUGHPUT", "source": "tuned"}
    assert _session({}, {"a": {"session": tuned}, "b": {"session": tuned}}, ["a", "b"]) == tuned
    m = _manifest(ov_copy)
    m["session"] = tuned
    (ov_copy / "manifest.json").write_text(json.dumps(m))
    with Bundle.open(ov_copy) as b:
        info = b.load(b.stitches()[0].id).info
    assert info["config"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert info["config"]["INFERENCE_NUM_THREADS"] == "1"


@pytest.mark.parametrize("pin", [False, True])
def test_tuned_cpu_pinning_reaches_the_runtime(ov_copy, pin):
    """ENABLE_CPU_PINNING ('profile --tune' measures both) is what the bundle compiles with, as the
    plugin reads it back; a manifest that says anything but true/false is refused in one line."""
    m = _manifest(ov_copy)
    m["session"] = {"threads": 1, "performance_hint": "LATENCY", "cpu_pinning": pin, "source": "tuned"}
    (ov_copy / "manifest.json").write_text(json.dumps(m))
    with Bundle.open(ov_copy) as b:
        s = b.load(b.stitches()[0].id)
        assert s.info["config"]["ENABLE_CPU_PINNING"] == str(pin)
        assert s.compiled.get_property("ENABLE_CPU_PINNING") is pin
    m["session"]["cpu_pinning"] = "YES"
    (ov_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="session.cpu_pinning"):
        Bundle.open(ov_copy)


def test_openvino_records_and_runner_carry_cpu_pinning(ov_bundle):
    """The profiler's runner compiles with the target's pinning; the record's session says it
    and the settings hash tells pinned and unpinned measurements apart."""
    import dataclasses

    from esta_export.backends import get_backend
    from esta_export.profiling.record import MeasureContext
    from esta_export.runtime.session import SessionSettings
    from esta_export.runtime.timing import TimingProtocol
    from esta_export.targets import load_target

    base = load_target("intel-cpu")
    compiled = ov_bundle.parent / "compiled"
    art = json.loads((compiled / "compile.json").read_text())["artifacts"][0]
    ctxs = []
    for pin in (True, False):
        t = dataclasses.replace(base, execution=dataclasses.replace(base.execution, cpu_pinning=pin))
        r = get_backend("openvino").load(compiled / art["path"], t)
        assert r.info["cpu_pinning"] is pin and r.info["config"]["ENABLE_CPU_PINNING"] == str(pin)
        r.close()
        ctx = MeasureContext.for_pass(t, backend="openvino", precision="fp32", batch=1,
                                      shape=[1, 3, 32, 32], protocol=TimingProtocol(),
                                      session=SessionSettings(source="tuned"), env={}, env_hash="e")
        assert ctx.session_record()["cpu_pinning"] is pin
        ctxs.append(ctx.settings)
    assert ctxs[0] != ctxs[1]
