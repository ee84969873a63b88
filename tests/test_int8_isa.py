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


# ---- the bundle runtime on a CPU lacking what an int8 stitch was validated with --------------
def _int8_bundle(root, monkeypatch, *, declared, host=VNNI, target="cpu-int8"):
    """Compile a tiny export for an int8 target declaring ``declared`` cpu_flags on a CPU with
    ``host`` flags (lenient gate: compile passes on any real CPU), then bundle it."""
    from pathlib import Path

    from esta_export.bundle.writer import write_bundle
    from esta_export.compile import compile_export
    from tiny_export import make_export

    export = make_export(root / "export")
    src = Path(load_target(target).source).read_text()
    flags = "" if declared is None else f"cpu_flags = {list(declared)!r}\n".replace("'", '"')
    toml = root / f"{target}.toml"
    toml.write_text(src.replace("[device]\n", "[device]\n" + flags)
                    + "\n[validation]\nint8_min_top1_agreement = 0.01\nmax_accuracy_drop = 1.0\n")
    monkeypatch.setenv(ENV_VAR, host)
    s = compile_export(export, str(toml), root / "compiled", calibration=calibration(24))
    assert s["artifacts"], s["failed"]
    monkeypatch.delenv(ENV_VAR)
    return write_bundle(None, s["target"], root / "bundle", export_dir=export,
                        compiled_dir=root / "compiled")


@pytest.fixture(scope="module")
def full_range_bundle(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        yield _int8_bundle(tmp_path_factory.mktemp("full"), mp, declared=("avx2", "avx512_vnni"))
    finally:
        mp.undo()


@pytest.fixture
def full_copy(full_range_bundle, tmp_path):
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(full_range_bundle, dst)
    return dst


def _manifest(root):
    import json

    return json.loads((root / "manifest.json").read_text())


def _edit_manifest(root, change):
    import json

    m = _manifest(root)
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_bundle_records_isa_and_ships_reference(full_range_bundle):
    m = _manifest(full_range_bundle)
    for e in m["stitches"]:
        isa = e["int8_isa"]
        assert e["precision"] == "int8" and isa["setting"] == {"reduce_range": False}
        assert isa["validated_on"]["flags"] == _features(VNNI)["flags"] and isa["requires_any"]
    assert m["reference"]["path"] == "reference.npz"
    assert m["reference"]["thresholds"]["int8_min_top1_agreement"] == 0.01
    assert any(f["path"] == "reference.npz" for f in m["files"])


def test_bundle_runs_full_range_where_validated(full_range_bundle, monkeypatch):
    from esta_export.runtime import Bundle

    monkeypatch.setenv(ENV_VAR, "avx2,amx_int8")  # another int8-dot CPU: validation holds
    b = Bundle.open(full_range_bundle)
    for s in b.stitches():
        b.load(s.id)
    assert b.int8_checks == {}


def test_bundle_revalidates_on_a_cpu_without_vnni(full_range_bundle, monkeypatch):
    from esta_export.runtime import Bundle

    monkeypatch.setenv(ENV_VAR, NO_VNNI)
    b = Bundle.open(full_range_bundle)
    x = np.load(full_range_bundle / "reference.npz")["x"][:2]
    for s in b.stitches():
        assert b.run(x, stitch_id=s.id).shape == (2, 10)
        v = b.int8_checks[s.id]
        assert v["samples"] >= 8 and "re-validated on this CPU" in v["note"]


def test_bundle_refuses_when_revalidation_fails(full_copy, monkeypatch):
    from esta_export.runtime import Bundle, BundleError

    _edit_manifest(full_copy, lambda m: m["reference"]["thresholds"].update(int8_min_top1_agreement=1.01))
    monkeypatch.setenv(ENV_VAR, VNNI)
    Bundle.open(full_copy).load(0)  # where it was validated, nothing is re-checked
    monkeypatch.setenv(ENV_VAR, NO_VNNI)
    with pytest.raises(BundleError, match=r"int8 stitch 0 refused: .*top-1 agreement .* < 1\.01") as err:
        Bundle.open(full_copy).load(0)
    assert "\n" not in str(err.value) and "cpu_flags" in str(err.value)


def test_bundle_refuses_without_reference(full_copy, monkeypatch):
    from esta_export.runtime import Bundle, BundleError

    _edit_manifest(full_copy, lambda m: m.update(reference=None))
    monkeypatch.setenv(ENV_VAR, NO_VNNI)
    with pytest.raises(BundleError, match="no reference outputs"):
        Bundle.open(full_copy).load(0)


def test_tampered_reference_is_an_integrity_error(full_copy, monkeypatch):
    from esta_export.runtime import Bundle, IntegrityError

    ref = dict(np.load(full_copy / "reference.npz"))
    ref["ref_0"] = ref["ref_0"][:, ::-1].copy()  # a reference that would pass anything
    np.savez(full_copy / "reference.npz", **ref)
    monkeypatch.setenv(ENV_VAR, NO_VNNI)
    with pytest.raises(IntegrityError, match="reference.npz"):
        Bundle.open(full_copy, verify=False).load(0)


def test_app_refusal_is_one_line(full_copy):
    import os
    import subprocess
    import sys

    _edit_manifest(full_copy, lambda m: m["reference"]["thresholds"].update(int8_min_top1_agreement=1.01))
    env = {**os.environ, ENV_VAR: NO_VNNI}
    proc = subprocess.run([sys.executable, "-I", str(full_copy / "app.py"), "--runs", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "int8 stitch" in proc.stderr and "refused" in proc.stderr


def test_reduced_range_bundle_needs_no_revalidation(tmp_path, monkeypatch):
    from esta_export.runtime import Bundle

    root = _int8_bundle(tmp_path, monkeypatch, declared=None, host=NO_VNNI)
    m = _manifest(root)
    assert all(e["int8_isa"]["setting"] == {"reduce_range": True} for e in m["stitches"])
    monkeypatch.setenv(ENV_VAR, NO_VNNI)
    b = Bundle.open(root)
    ref = np.load(root / "reference.npz")
    for s in b.stitches():
        out = b.run(ref["x"], stitch_id=s.id)
        assert np.mean(out.argmax(1) == ref[f"ref_{s.id}"].argmax(1)) >= 0.9  # exact here, any CPU
    assert b.int8_checks == {}


# ---- bad inputs: each ends in one line, exit status 2, no traceback (corpus rules) ------------
def _rewrite_reference(root, **arrays):
    """A consistent but hostile bundle: reference.npz replaced and its sha256 updated."""
    import hashlib
    import json

    ref = dict(np.load(root / "reference.npz"))
    ref.update(arrays)
    for k in [k for k, v in arrays.items() if v is None]:
        ref.pop(k)
    np.savez(root / "reference.npz", **ref)
    m = _manifest(root)
    for f in m["files"]:
        if f["path"] == "reference.npz":
            data = (root / "reference.npz").read_bytes()
            f["sha256"], f["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (root / "manifest.json").write_text(json.dumps(m))


BAD_BUNDLES = {
    "gate-not-a-number": (lambda r: _edit_manifest(r, lambda m: m["reference"]["thresholds"].update(
        int8_min_top1_agreement="high")), "not numbers"),
    "gate-out-of-range": (lambda r: _edit_manifest(r, lambda m: m["reference"]["thresholds"].update(
        max_accuracy_drop=5.0)), "out of range"),
    "reference-outside": (lambda r: _edit_manifest(r, lambda m: m["reference"].update(path="../../etc/passwd")),
                          "leaves the bundle"),
    "reference-missing": (lambda r: (r / "reference.npz").unlink(), "reference.npz"),
    "reference-not-npz": (lambda r: _rewrite_file(r, "reference.npz", b"not a zip"), "not a readable .npz"),
    "reference-wrong-shape": (lambda r: _rewrite_reference(r, x=np.zeros((4, 3, 8, 8), np.float32)),
                              "cannot re-validate"),
    "reference-outputs-wrong-shape": (lambda r: _rewrite_reference(r, ref_0=np.zeros((2, 3), np.float32)),
                                      "cannot re-validate"),
    "reference-nan-outputs-fail": (lambda r: _rewrite_reference(
        r, ref_0=np.full(np.load(r / "reference.npz")["ref_0"].shape, np.nan, np.float32)), "refused"),
    "isa-record-malformed": (lambda r: _edit_manifest(r, lambda m: [e.update(int8_isa={"requires_any": 5})
                                                                   for e in m["stitches"]]
                                                      and m["reference"]["thresholds"].update(
                                                          int8_min_top1_agreement=1.01)), "refused"),
    "no-reference": (lambda r: _edit_manifest(r, lambda m: m.update(reference=None)), "no reference outputs"),
}


def _rewrite_file(root, rel, data: bytes):
    import hashlib
    import json

    (root / rel).write_bytes(data)
    m = _manifest(root)
    for f in m["files"]:
        if f["path"] == rel:
            f["sha256"], f["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bad_int8_bundle_on_a_cpu_without_vnni(case, full_copy):
    import os
    import subprocess
    import sys

    edit, expect = BAD_BUNDLES[case]
    edit(full_copy)
    before = {p: p.read_bytes() for p in full_copy.rglob("*") if p.is_file()}
    env = {**os.environ, ENV_VAR: NO_VNNI}
    proc = subprocess.run([sys.executable, "-I", str(full_copy / "app.py"), "--runs", "1", "--stitch", "0"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=full_copy.parent)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expect in proc.stderr, proc.stderr
    after = {p: p.read_bytes() for p in full_copy.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {p: b for p, b in before.items() if "__pycache__" not in p.parts} == after  # nothing written
