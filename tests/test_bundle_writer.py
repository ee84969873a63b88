"""Bundle writer: contents, weight dedupe, exclusions, crash safety, the torch-free example app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.family import make_family
from esta_export.bundle.writer import write_bundle
from esta_export.errors import BundleError, InputError


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    # compiled artifacts each carry their own data file: the writer must store shared tensors once
    return make_family(tmp_path_factory.mktemp("job"), compiled_separate_weights=True, fail_ids=(2,))


@pytest.fixture(scope="module")
def bundle(job):
    return write_bundle(job, "cpu", job / "bundle" / "cpu")


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def test_manifest_lists_every_file_with_hash_and_size(bundle):
    import hashlib

    m = _manifest(bundle)
    assert m["schema"] == "esta-export/bundle" and m["schema_version"] == "1.0"
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
                     if p.is_file() and p.name != "manifest.json" and "__pycache__" not in p.parts)
    assert sorted(f["path"] for f in m["files"]) == on_disk
    for f in m["files"]:
        data = (bundle / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
    for name in ("README.md", "app.py", "profile_device.py", "esta_runtime/__init__.py",
                 "models/weights.bin", "models/weights.json"):
        assert name in on_disk


def test_failed_stitch_is_excluded_with_reason(bundle):
    m = _manifest(bundle)
    assert 2 not in [s["id"] for s in m["stitches"]]
    assert [e["id"] for e in m["excluded"]] == [2] and "tolerance" in m["excluded"][0]["reason"]
    assert "excluded" in (bundle / "README.md").read_text()


def test_per_stitch_metadata(bundle):
    m = _manifest(bundle)
    assert m["input"]["layout"] == "NCHW" and m["input"]["image_size"] == 32
    assert m["input"]["labels"][0] == "class_0" and len(m["input"]["mean"]) == 3
    assert m["target"]["name"] == "cpu" and m["target"]["runtime"]["onnxruntime"]
    for s in m["stitches"]:
        assert s["route"] and s["flops"] > 0 and s["params"] > 0
        assert s["latency"]["source"] == "predicted" and s["latency"]["median"] > 0
        assert s["accuracy"] is not None and s["accuracy_source"]
        assert s["validation"]["passed"] is True
        assert s["bundle_check"]["max_abs_diff_vs_compiled"] == 0.0
        assert s["artifact"]["format"] == "onnx" and s["artifact"]["compiled_sha256"]


def test_weights_stored_once(job, bundle):
    compiled_data = sum(p.stat().st_size for p in (job / "compiled" / "cpu").glob("*.data"))
    m = _manifest(bundle)
    weights = (bundle / "models" / "weights.bin").stat().st_size
    unique = m["weights"]["unique_bytes"]
    assert weights < unique + 64 * m["weights"]["tensors"]  # only alignment padding on top
    assert weights < 0.6 * compiled_data  # the per-artifact copies were deduplicated
    # every tensor of the bundled graphs points into the one weights file
    import onnx

    for s in m["stitches"]:
        model = onnx.load(str(bundle / s["artifact"]["path"]), load_external_data=False)
        locs = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locs == {"weights.bin"}


def test_bundled_graphs_match_compiled_artifacts(job, bundle):
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for s in _manifest(bundle)["stitches"]:
        a = ort.InferenceSession(str(job / "compiled" / "cpu" / f"stitch_{s['id']:03d}.onnx")).run(None, {"pixels": x})[0]
        b = ort.InferenceSession(str(bundle / s["artifact"]["path"])).run(None, {"pixels": x})[0]
        np.testing.assert_array_equal(a, b)


def test_without_selection_bundles_all_validated(tmp_path):
    job = make_family(tmp_path / "job", with_selection=False)
    b = write_bundle(job, "cpu", tmp_path / "b")
    m = _manifest(b)
    assert len(m["stitches"]) == 4 and "no selection" in m["selection"]["note"]
    assert all(s["latency"] is None for s in m["stitches"])  # nothing measured: nothing invented


def test_rewrite_replaces_and_failure_leaves_nothing(job, tmp_path):
    out = tmp_path / "b"
    write_bundle(job, "cpu", out)
    first = _manifest(out)["created"]
    write_bundle(job, "cpu", out)
    assert (out / "manifest.json").is_file() and _manifest(out)["created"] >= first
    broken = make_family(tmp_path / "broken")
    (broken / "compiled" / "cpu" / "stitch_001.onnx").unlink()
    with pytest.raises(BundleError, match="stitch_001.onnx"):
        write_bundle(broken, "cpu", tmp_path / "nb")
    assert not (tmp_path / "nb").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nb.")]  # no temp folder left


def test_wrong_target_and_missing_inputs_are_user_errors(job, tmp_path):
    with pytest.raises(InputError, match="export.json"):
        write_bundle(tmp_path / "nothing", "cpu", tmp_path / "b")
    with pytest.raises(InputError, match="not 'other'"):
        write_bundle(None, "other", tmp_path / "b", export_dir=job / "export", compiled_dir=job / "compiled" / "cpu")


def test_cli_bundle_and_archive(job, tmp_path, capsys):
    from esta_export.cli import main

    assert main(["bundle", str(job), "--target", "cpu", "--out", str(tmp_path / "cli")]) == 0
    assert "3 stitches, 1 excluded" in capsys.readouterr().out
    assert main(["bundle", str(job), "--target", "cpu", "--out", str(tmp_path / "arc"), "--archive"]) == 0
    assert (tmp_path / "arc.tar.gz").is_file() and not (tmp_path / "arc").exists()
    assert main(["bundle", str(tmp_path / "missing"), "--target", "cpu"]) == 2
    assert "export.json" in capsys.readouterr().err


def test_tensorrt_bundle_carries_build_kit(tmp_path):
    """Real compile stage for a Jetson target (no TensorRT here): graphs + kit, engines built on the device."""
    from esta_export.compile import compile_export
    from esta_export.runtime import Bundle

    job = make_family(tmp_path / "job", with_selection=False)
    summary = compile_export(job / "export", "jetson-orin", job / "compiled" / "jetson-orin")
    if summary["engines_built"]:
        pytest.skip("running on a Jetson: engines were built here")
    b = write_bundle(job, "jetson-orin", tmp_path / "b")
    m = _manifest(b)
    trt = m["target"]["tensorrt"]
    assert trt["version"] and trt["gpu"] and trt["timing_cache"] == "timing.cache" and trt["kit"] == "kit.json"
    assert m["target"]["verified_on_hardware"] is False and len(m["stitches"]) == 4
    kit = json.loads((b / "kit.json").read_text())
    for plan in kit["plans"]:  # the kit builds from the bundle's graphs, which share one weights file
        assert (b / plan["onnx"]).is_file() and plan["onnx"].startswith("models/")
        assert plan["engine"].startswith("engines/") and plan["timing_cache"] == "timing.cache"
    for name in ("build_engines.py", "trtexec.sh", "README_DEVICE.md"):
        assert (b / name).is_file()
    assert "models/stitch_000.onnx" in (b / "trtexec.sh").read_text()
    assert all(s["engine"] == {"path": f"engines/stitch_{s['id']:03d}.plan", "built": False} for s in m["stitches"])
    assert "not verified on hardware" in (b / "README.md").read_text()
    status = Bundle.open(b).engine_status(found={"tensorrt": "10.3.0", "gpu": "Orin",
                                                 "compute_capability": "8.7"})
    assert set(status) == {s["id"] for s in m["stitches"]}
    assert all(v == f"stitch {sid}: not built" for sid, v in status.items())
    assert (b / "esta_runtime" / "tensorrt" / "kit.py").is_file()  # what build_engines.py launches
    assert trt["engines"]["0"]["weights"] == "stripped" and all(p["weights"] == "stripped" for p in kit["plans"])
    # build_engines.py validates each engine on the device: the bundle carries the reference
    # inputs, the fp32 logits of every bundled stitch and the target's gates
    assert kit["reference"] == "reference.npz" and kit["thresholds"]["fp16_min_cosine"] == 0.999
    ref = np.load(b / "reference.npz")
    compiled_ref = np.load(job / "compiled" / "jetson-orin" / "reference.npz")
    assert set(ref.files) == {"x"} | {f"ref_{p['id']}" for p in kit["plans"]}
    np.testing.assert_array_equal(ref["x"], compiled_ref["x"][:len(ref["x"])])
    np.testing.assert_array_equal(ref["ref_3"], compiled_ref["ref_3"][:len(ref["x"])])
    assert len(ref["x"]) >= 8 and ref["x"].nbytes <= 8 << 20
    assert "reference.npz" in {f["path"] for f in m["files"]}
    assert "validation.json" in (b / "README_DEVICE.md").read_text()


def test_real_export_and_compile_stages_bundle_and_match_reference(v1_supernet, tmp_path):
    """The lead's exporter and helper's compile stage feed the bundle; the runtime reproduces the
    compile stage's fp32 reference logits."""
    from esta_export.compile import compile_export
    from esta_export.onnx_export import export_supernet
    from esta_export.runtime import Bundle
    from esta_export.supernet import load_supernet, save_supernet

    path = save_supernet(v1_supernet, tmp_path / "tiny.safetensors")
    job = tmp_path / "out"
    export_supernet(load_supernet(path), job / "export", stitches="0-3")
    compile_export(job / "export", "cpu", job / "compiled" / "cpu")
    b = Bundle.open(write_bundle(job, "cpu", job / "bundle" / "cpu"), load="all")
    ref = np.load(job / "compiled" / "cpu" / "reference.npz")
    assert len(b.stitches()) == 4
    for s in b.stitches():
        np.testing.assert_allclose(b.run(ref["x"], stitch_id=s.id), ref[f"ref_{s.id}"], rtol=1e-4, atol=1e-5)
        assert s.info["bundle_check"]["max_abs_diff_vs_compiled"] == 0.0


BLOCKER = r"""
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "esta_export", "onnxscript"):
            raise ImportError(f"{name} is blocked: the app must run without it")
        return None
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "esta_export"))
    print("HEAVY", heavy)
"""


def test_app_runs_without_torch_or_esta_export(bundle, tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "img.npy", img)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    for args in ([str(tmp_path / "img.npy"), "--budget-ms", "1000", "--runs", "3"], []):
        proc = subprocess.run([sys.executable, "-I", "-c", BLOCKER, str(bundle / "app.py"), *args],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "top-5: class_" in proc.stdout and "latency over" in proc.stdout, proc.stdout + proc.stderr
        assert "HEAVY []" in proc.stdout
    assert "random pixels" in proc.stdout


def test_app_budget_too_small_is_one_line_error(bundle, tmp_path):
    proc = subprocess.run([sys.executable, "-I", str(bundle / "app.py"), "--budget-ms", "0.000001"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "raise the budget" in proc.stderr


def test_device_reference_is_capped_but_keeps_enough_samples(tmp_path):
    from esta_export.bundle.parts import MAX_REFERENCE_BYTES, write_device_reference as _write_device_reference

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 224, 224)).astype(np.float32)  # 24 MB of 224 px inputs
    np.savez(tmp_path / "reference.npz", x=x, y=np.arange(40), ref_1=rng.standard_normal((40, 5)),
             ref_2=rng.standard_normal((40, 5)))
    out = tmp_path / "bundle"
    out.mkdir()
    assert _write_device_reference(out, {"reference": "reference.npz"}, tmp_path, [2]) == "reference.npz"
    ref = np.load(out / "reference.npz")
    assert set(ref.files) == {"x", "y", "ref_2"}  # only the bundled stitch's logits
    n = len(ref["x"])
    assert 8 <= n < 40 and ref["x"].nbytes <= MAX_REFERENCE_BYTES
    np.testing.assert_array_equal(ref["x"], x[:n])
    np.testing.assert_array_equal(ref["y"], np.arange(n))
    assert _write_device_reference(out, {}, tmp_path, [2]) is None  # no reference: nothing shipped
