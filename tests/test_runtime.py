"""The stitch-switching runtime: integrity, selection, switching under threads, shared weights,
preprocessing, and that it imports without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from fixtures.family import make_family
from esta_export.bundle.writer import write_bundle
from esta_export.runtime import (Bundle, BundleError, EngineMismatchError, IntegrityError,
                                 NoStitchFitsError, preprocess)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    job = make_family(tmp_path_factory.mktemp("job"))
    return write_bundle(job, "cpu", job / "bundle" / "cpu")


@pytest.fixture
def copy(bundle_dir, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def _flip(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_open_verifies_and_lists(bundle_dir):
    b = Bundle.open(bundle_dir)
    ids = [s.id for s in b.stitches()]
    assert ids == [0, 1, 2, 3] and b.labels[0] == "class_0"
    assert all(s.latency_source == "predicted" for s in b.stitches())


@pytest.mark.parametrize("rel", ["models/weights.bin", "models/stitch_003.onnx", "esta_runtime/bundle.py"])
def test_flipped_byte_names_the_file(copy, rel):
    _flip(copy / rel)
    with pytest.raises(IntegrityError, match=rel.replace(".", r"\.")) as err:
        Bundle.open(copy)
    assert "\n" not in str(err.value)


def test_tampered_graph_refused_at_load_even_without_verify(copy):
    _flip(copy / "models" / "stitch_001.onnx", offset=-3)
    b = Bundle.open(copy, verify=False)
    b.run(np.zeros((1, 3, 32, 32), np.float32), stitch_id=0)  # untouched stitch still runs
    with pytest.raises(IntegrityError, match="stitch_001.onnx.*validated"):
        b.activate(1)


def test_manifest_cannot_point_outside(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["files"].append({"path": "../outside.txt", "sha256": "0" * 64, "size": 1})
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="leaves the bundle"):
        Bundle.open(copy)


def test_select(bundle_dir):
    b = Bundle.open(bundle_dir, verify=False)
    lat = {s.id: s.latency_ms for s in b.stitches()}
    acc = {s.id: s.accuracy for s in b.stitches()}
    best = max(acc, key=acc.get)
    assert b.select().id == best
    budget = sorted(lat.values())[1]  # two stitches fit
    fits = [i for i in lat if lat[i] <= budget]
    assert b.select(latency_budget_ms=budget).id == max(fits, key=acc.get)
    floor = sorted(acc.values())[1]
    meeting = [i for i in acc if acc[i] >= floor]
    assert b.select(min_accuracy=floor).id == min(meeting, key=lat.get)
    with pytest.raises(NoStitchFitsError, match="raise the budget"):
        b.select(latency_budget_ms=min(lat.values()) / 2)
    with pytest.raises(NoStitchFitsError, match="reaches accuracy"):
        b.select(latency_budget_ms=min(lat.values()), min_accuracy=max(acc.values()))
    with pytest.raises(NoStitchFitsError, match="not in this bundle"):
        b.activate(99)


def test_shared_weights_load_each_tensor_once(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    shared = Bundle.open(bundle_dir, verify=False, load="all")
    assert shared.loaded == [0, 1, 2, 3]
    assert shared._weights.resident_bytes == m["weights"]["unique_bytes"]
    own = Bundle.open(bundle_dir, verify=False, share_weights=False)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for sid in shared.loaded:
        # prepacked and unpacked GEMMs may sum in another order: equal up to float rounding
        np.testing.assert_allclose(shared.run(x, stitch_id=sid), own.run(x, stitch_id=sid), rtol=1e-5, atol=1e-6)
    shared.activate(0)
    for sid in (1, 2, 3):
        shared.unload(sid)
    assert 0 < shared._weights.resident_bytes < m["weights"]["unique_bytes"]
    with pytest.raises(BundleError, match="is active"):
        shared.unload(0)


def test_switching_under_threads(bundle_dir):
    b = Bundle.open(bundle_dir, verify=False, load="all")
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    refs = {sid: b.run(x, stitch_id=sid) for sid in (0, 3)}
    b.activate(0)
    errors, outputs, stop = [], [], threading.Event()

    def infer():
        try:
            while not stop.is_set():
                outputs.append(b.run(x))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    workers = [threading.Thread(target=infer) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(200):
        b.activate(3 if i % 2 == 0 else 0)
    stop.set()
    for w in workers:
        w.join()
    assert not errors and outputs
    # every result is exactly one stitch's output: no torn state between sessions
    for out in outputs:
        assert any(np.array_equal(out, r) for r in refs.values())


def test_run_without_activate_uses_selection(bundle_dir):
    b = Bundle.open(bundle_dir, verify=False)
    out = b.run(np.zeros((2, 3, 32, 32), np.float32))
    assert out.shape == (2, 10) and b.active.id == b.select().id


def test_preprocess_equals_reference_and_logits_match(bundle_dir):
    b = Bundle.open(bundle_dir, verify=False)
    img = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean = np.array(b.input_spec["mean"], np.float32)
    std = np.array(b.input_spec["std"], np.float32)
    ref = ((img.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    x = b.preprocess(img)
    assert x.dtype == np.float32 and x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6)
    b.activate(1)
    np.testing.assert_allclose(b.run(x), b.run(ref.astype(np.float32)), rtol=0, atol=1e-5)
    top = b.classify(img, top_k=3)
    assert len(top) == 3 and top[0][0].startswith("class_") and top[0][1] >= top[1][1]


def test_bilinear_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    img = np.random.default_rng(4).random((45, 61, 3)).astype(np.float32)
    spec = {"image_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}
    ours = preprocess(img, spec)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img.transpose(2, 0, 1))[None], size=(32, 32),
                                          mode="bilinear", align_corners=False, antialias=False).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    up = preprocess(img[:20, :20], spec)
    ref_up = torch.nn.functional.interpolate(torch.from_numpy(img[:20, :20].transpose(2, 0, 1).copy())[None],
                                             size=(32, 32), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(up, ref_up, atol=1e-5)
    near = preprocess((img * 255).astype(np.uint8), spec, resize="nearest")
    ref_near = torch.nn.functional.interpolate(
        torch.from_numpy((img * 255).astype(np.uint8).transpose(2, 0, 1).astype(np.float32) / 255)[None],
        size=(32, 32), mode="nearest-exact").numpy()
    np.testing.assert_allclose(near, ref_near, atol=1e-6)


def test_preprocess_rejects_bad_images():
    with pytest.raises(BundleError, match="HxWxC"):
        preprocess(np.zeros((4, 4, 5)), {"image_size": 4})


def test_runtime_imports_without_torch_or_onnx():
    code = ("import sys, esta_export.runtime as r, esta_export.runtime.profiler, esta_export.runtime.tensorrt.check, esta_export.runtime.tensorrt.kit, esta_export.runtime.tensorrt.session, esta_export.runtime.tensorrt.refit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch','onnx','onnxruntime','onnxscript')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__('pathlib').Path(__file__).parents[1]))
    assert out.stdout.strip() == "[]"


def test_open_errors(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Bundle.open(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(tmp_path)


def test_select_without_accuracies_falls_back_to_flops(copy):
    m = json.loads((copy / "manifest.json").read_text())
    for s in m["stitches"]:
        s["accuracy"] = s["accuracy_source"] = None
    (copy / "manifest.json").write_text(json.dumps(m))
    b = Bundle.open(copy)
    assert b.select().id == max(b.stitches(), key=lambda s: s.flops).id
    with pytest.raises(NoStitchFitsError, match="no stitch in this bundle has a recorded accuracy"):
        b.select(min_accuracy=0.1)


def test_unload_while_other_threads_run_keeps_weights_alive(bundle_dir):
    import gc

    b = Bundle.open(bundle_dir, verify=False)
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    refs = [b.run(x, stitch_id=sid) for sid in (0, 3)]
    b.activate(0)
    outputs, errors, stop = [], [], threading.Event()

    def infer():
        try:
            while not stop.is_set():
                outputs.append(b.run(x))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    workers = [threading.Thread(target=infer) for _ in range(2)]
    for w in workers:
        w.start()
    for _ in range(15):  # load, switch to, switch away from and unload stitch 3 while runs go on
        b.activate(3)
        b.activate(0)
        b.unload(3)
        gc.collect()
    stop.set()
    for w in workers:
        w.join()
    assert not errors and outputs
    for out in outputs:
        assert any(np.array_equal(out, r) for r in refs)


def test_tampered_weights_refused_at_load_without_verify(copy):
    import json as _json

    index = _json.loads((copy / "models" / "weights.json").read_text())
    t = index["tensors"][index["stitches"]["1"][next(iter(index["stitches"]["1"]))]]
    _flip(copy / "models" / "weights.bin", offset=t["offset"] + 1)
    b = Bundle.open(copy, verify=False)
    with pytest.raises(IntegrityError, match=r"models/weights\.bin"):
        b.activate(1)


# ---- TensorRT bundles: engines are used only when built for this device and validated ---------
# No TensorRT here: these cover every refusal and the ONNX Runtime fallback. The build records
# written below are the files build_engines.py leaves next to an engine; nothing runs an engine.
@pytest.fixture(scope="module")
def trt_bundle_dir(tmp_path_factory):
    from esta_export.compile import compile_export

    job = make_family(tmp_path_factory.mktemp("trtjob"), with_selection=False)
    summary = compile_export(job / "export", "jetson-orin", job / "compiled" / "jetson-orin")
    if summary["engines_built"]:
        pytest.skip("running on a Jetson: engines were built at compile time")
    return write_bundle(job, "jetson-orin", job / "bundle" / "jetson-orin")


@pytest.fixture
def trt_copy(trt_bundle_dir, tmp_path):
    dst = tmp_path / "tb"
    shutil.copytree(trt_bundle_dir, dst)
    return dst


# What a Jetson AGX Orin devkit with JetPack 6.1 reports, each field from the source the runtime
# reads it from (CUDA device properties, /etc/nv_tegra_release, /proc/device-tree/compatible):
# none of them is the target's name "NVIDIA Jetson AGX Orin 64GB".
AGX_ORIN = {"tensorrt": "10.3.0.30", "machine": "aarch64", "gpu": "Orin", "compute_capability": "8.7",
            "l4t": "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64",
            "module": "nvidia,p3737-0000+p3701-0005 nvidia,p3701-0005 nvidia,tegra234"}
ORIN_NANO = dict(AGX_ORIN, module="nvidia,p3768-0000+p3767-0005 nvidia,p3767-0005 nvidia,tegra234")
H200 = dict(AGX_ORIN, machine="x86_64", gpu="NVIDIA H200", compute_capability="9.0", l4t=None, module=None)


def _fake_build_records(root, *, passed=True, onnx_sha=None, skip=(), fp=AGX_ORIN):
    """Write the files build_engines.py leaves behind (plan bytes + .plan.json key and verdict),
    the key made by the runtime's own engine_key from the fingerprint of the device it was built on."""
    from esta_export.runtime.integrity import sha256_file
    from esta_export.runtime.tensorrt.device import engine_key

    kit = json.loads((root / "kit.json").read_text())
    (root / "engines").mkdir(exist_ok=True)
    for plan in kit["plans"]:
        if plan["id"] in skip:
            continue
        engine = root / plan["engine"]
        engine.write_bytes(b"plan bytes of stitch %d" % plan["id"])
        ok = passed(plan["id"]) if callable(passed) else passed
        verdict = {"tier": 3, "precision": "fp16", "passed": ok, "metric": "cosine_min",
                   "value": 0.9999 if ok else 0.5, "threshold": 0.999,
                   "engine_sha256": sha256_file(engine)}
        key = engine_key(plan, onnx_sha or sha256_file(root / plan["onnx"]), fp)
        (root / (plan["engine"] + ".json")).write_text(json.dumps({"key": key, "validation": verdict,
                                                                    "weights": "full"}))
    return kit


def _profile_device(root, *args):
    return subprocess.run([sys.executable, "-I", str(root / "profile_device.py"), "--runs", "3",
                           "--seconds", "0", *args], capture_output=True, text=True, cwd=root.parent,
                          timeout=300)


def _one_line_refusal(proc, *needles):
    from esta_export.runtime.tensorrt.check import NOT_READY

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert NOT_READY in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_tensorrt_profiler_refuses_without_engines(trt_copy):
    _one_line_refusal(_profile_device(trt_copy), "stitch 0: not built", "more")


def test_tensorrt_profiler_refuses_a_failed_engine(trt_copy):
    _fake_build_records(trt_copy, passed=lambda sid: sid != 2)
    _one_line_refusal(_profile_device(trt_copy), "stitch 2: failed validation (cosine_min = 0.5")
    # engine="tensorrt" needs every stitch ready, even when only some are timed
    _one_line_refusal(_profile_device(trt_copy, "--stitches", "0,1"), "stitch 2: failed validation")
    # every record passes the file checks: then TensorRT itself is needed, and it is not here
    _fake_build_records(trt_copy)
    _one_line_refusal(_profile_device(trt_copy), "TensorRT's Python bindings are not importable")


def test_tensorrt_profiler_refuses_an_unvalidated_or_swapped_engine(trt_copy):
    _fake_build_records(trt_copy, passed=None)
    _one_line_refusal(_profile_device(trt_copy), "stitch 0: not validated")
    _fake_build_records(trt_copy)
    (trt_copy / "engines" / "stitch_001.plan").write_bytes(b"another engine")
    _one_line_refusal(_profile_device(trt_copy), "stitch 1: stitch_001.plan is not the engine that was validated")


def test_tensorrt_profiler_refuses_a_stale_engine(trt_copy):
    from esta_export.runtime.tensorrt.check import EnginesNotReadyError, ready_engines

    _fake_build_records(trt_copy, onnx_sha="0" * 64)
    _one_line_refusal(_profile_device(trt_copy), "built from another graph")
    # built for another TensorRT / GPU: the key against this device's fingerprint
    _fake_build_records(trt_copy)
    m = json.loads((trt_copy / "manifest.json").read_text())
    assert sorted(ready_engines(trt_copy, m, [0, 1], fingerprint=AGX_ORIN)) == [0, 1]
    with pytest.raises(EnginesNotReadyError, match=r"stitch 0: built for another setup \(differs in: tensorrt, gpu, "):
        ready_engines(trt_copy, m, [0, 1], fingerprint=dict(H200, tensorrt="10.4.0"))


def test_engine_status_compares_like_with_like(trt_copy):
    """The bundle (real writer, target jetson-orin: "NVIDIA Jetson AGX Orin 64GB", TensorRT 10.3)
    on the board it names accepts the engines built there, although no name the board reports is
    the target's name; it refuses engines built on another board, GPU or TensorRT release, each
    with a line naming what differs."""
    from esta_export.runtime import Bundle

    m = json.loads((trt_copy / "manifest.json").read_text())
    expected = m["target"]["tensorrt"]
    assert expected["gpu"] == "NVIDIA Jetson AGX Orin 64GB" and expected["compute_capability"] == "8.7"
    assert expected["module"] == "p3701-0005" and expected["version"] == "10.3"
    b = Bundle.open(trt_copy)
    assert set(b.engine_status(found=AGX_ORIN).values()) == {
        f"stitch {s['id']}: not built" for s in m["stitches"]}
    _fake_build_records(trt_copy)  # built on this AGX Orin
    assert set(b.engine_status(found=AGX_ORIN).values()) == {"ok"}
    # the same engines seen from another device: its fingerprint is not the one in their keys
    assert "differs in: gpu, compute_capability, l4t" in b.engine_status(found=H200)[0]
    # engines built on an Orin Nano (their keys match it) are not what this bundle was made for
    _fake_build_records(trt_copy, fp=ORIN_NANO)
    assert "Jetson module p3701-0005 expected by the bundle" in b.engine_status(found=ORIN_NANO)[0]
    _fake_build_records(trt_copy, fp=H200)
    assert "compute capability 8.7 expected by the bundle, this GPU has 9.0" in b.engine_status(found=H200)[0]
    newer = dict(AGX_ORIN, tensorrt="10.4.0.26")
    _fake_build_records(trt_copy, fp=newer)
    assert "TensorRT 10.3 expected by the bundle, 10.4.0.26 installed" in b.engine_status(found=newer)[0]
    # and the runtime refuses what engine_status refuses (one check for both)
    from esta_export.runtime.tensorrt.check import EnginesNotReadyError, ready_engines

    with pytest.raises(EnginesNotReadyError, match="TensorRT 10.3 expected"):
        ready_engines(trt_copy, m, [0], fingerprint=newer)


def test_tensorrt_bundle_app_path_falls_back_to_onnxruntime_and_says_so(trt_copy):
    from esta_export.runtime.tensorrt.check import EnginesNotReadyError

    b = Bundle.open(trt_copy)
    assert b.engine == "onnxruntime" and "not its TensorRT engines" in b.engine_note
    assert "stitch 0: not built" in b.engine_note
    ref = np.load(trt_copy / "reference.npz")
    np.testing.assert_allclose(b.run(ref["x"][:2], stitch_id=1), ref["ref_1"][:2], rtol=1e-4, atol=1e-5)
    with pytest.raises(EnginesNotReadyError, match="build_engines.py kit.json"):
        Bundle.open(trt_copy, engine="tensorrt")
    assert "on request" in Bundle.open(trt_copy, engine="onnxruntime").engine_note
    proc = subprocess.run([sys.executable, "-I", str(trt_copy / "app.py"), "--runs", "1"],
                          capture_output=True, text=True, cwd=trt_copy.parent, timeout=300)
    assert proc.returncode == 0 and "running on onnxruntime" in proc.stdout
    assert "note: TensorRT bundle running its ONNX graphs with ONNX Runtime" in proc.stdout


def test_engine_choice_errors(bundle_dir):
    with pytest.raises(BundleError, match="needs a TensorRT bundle"):
        Bundle.open(bundle_dir, engine="tensorrt")
    with pytest.raises(BundleError, match="is not 'auto'"):
        Bundle.open(bundle_dir, engine="cuda")
    b = Bundle.open(bundle_dir)
    assert b.engine == "onnxruntime" and b.engine_note is None


def test_onnxruntime_bundle_still_profiles_with_onnxruntime(bundle_dir):
    import onnxruntime as ort

    proc = _profile_device(bundle_dir, "--stitches", "0,3")
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["stitch_id"] for r in recs] == [0, 3]
    for r in recs:
        assert r["runtime"] == "onnxruntime" and r["runtime_version"] == ort.__version__
        assert r["env"]["runtimes"]["onnxruntime"] == ort.__version__ and r["transfers"] is False
        lat = r["latency_ms"]
        assert lat["n"] >= 3 and 0 < lat["min"] <= lat["median"] <= lat["max"]
        lo, hi = lat["median_ci"]
        assert lo <= lat["median"] <= hi and lat["ci_level"] == 0.95 and lat["ci_method"]
        # the same protocol as the host's, the runtime's own session settings, switch-in apart
        assert r["protocol"]["block_calls"] >= 1 and r["protocol"]["cv_metric"] == "robust_cv"
        assert r["session"]["intra_op_spinning"] is False and "share_weights" in r["session"]
        assert r["switch_in_ms"]["n"] >= 1 and r["switch_in_ms"]["calls"] == 1
        # hardware truth from the fingerprint: the tests' bundle targets this machine's class
        assert r["env"]["processor"]["arch"] and r["hardware"]["ran_on"]
        assert r["verified_on_hardware"] is r["hardware"]["matches"]


def test_profiler_bad_stitch_ids_are_one_line_errors(bundle_dir):
    for ids, needle in (("0,99", "stitch 99 is not in this bundle"), ("0,x", "comma-separated")):
        proc = _profile_device(bundle_dir, "--stitches", ids)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
