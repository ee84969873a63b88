"""The main job with --device against a real OpenSSH server on loopback (the fixture of
test_remote.py) and a device-side virtual environment holding only numpy and onnxruntime: no
torch, no esta-export there. The "device" is this machine, reached over ssh as a user would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from test_remote import sshd  # noqa: F401 - the loopback OpenSSH server fixture

ROOT = Path(__file__).resolve().parents[1]
STITCHES = "0,1,2,3,4,5"


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    from conftest import perturbed, tiny_anchors
    from esta_export.supernet import Supernet, SupernetSpec
    from esta_export.supernet.formats import save_supernet

    model = perturbed(Supernet(SupernetSpec(tiny_anchors(depths=(2, 2), widths=(16, 32)), "snnet_v1")))
    return save_supernet(model, tmp_path_factory.mktemp("sn") / "tiny.safetensors")


@pytest.fixture(scope="module")
def device_python(tmp_path_factory) -> str:
    """A venv with nothing but numpy and onnxruntime (linked from this environment's installs)."""
    import numpy
    import onnxruntime

    d = tmp_path_factory.mktemp("devvenv") / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(d)
    py = d / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for mod in (numpy, onnxruntime):
        pkg = Path(mod.__file__).parent
        for p in pkg.parent.iterdir():  # the package, its bundled libraries and its dist-info
            if p.name == pkg.name or p.name.startswith((f"{pkg.name}.libs", f"{pkg.name}-")):
                (site / p.name).symlink_to(p)
    probe = subprocess.run([str(py), "-c", "import numpy, onnxruntime\ntry:\n import torch\nexcept ImportError:\n"
                            " print('ok')\n"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    if probe.stdout.strip() != "ok":
        pytest.skip(f"could not build a numpy+onnxruntime-only venv: {probe.stderr.strip()[-300:]}")
    return str(py)


def _job(args, cwd=None, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "esta_export", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def _device_args(sshd, device_python, remote_dir):  # noqa: F811
    return ["--device", f"{sshd['user']}@127.0.0.1:{sshd['port']}", "--identity", str(sshd["identity"]),
            "--known-hosts", str(sshd["known_hosts"]), "--device-python", device_python,
            "--device-dir", str(remote_dir)]


def _flaky_ssh(tmp_path: Path, match: str) -> dict:
    """An ``ssh`` first on PATH that drops the connection (kills the client) 1.5 s into the
    first command containing ``match``, like a Wi-Fi link to a board going away mid-step."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "dropped"
    real = "/usr/bin/ssh" if os.path.exists("/usr/bin/ssh") else "ssh"
    script = bindir / "ssh"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *"{match}"*)
    if [ ! -e {marker} ]; then
      touch {marker}
      {real} "$@" &
      pid=$!
      sleep 1.5
      kill -9 $pid
      exit 255
    fi;;
esac
exec {real} "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "_marker": str(marker)}


def _manifest_sans_latency(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    for s in m["stitches"]:
        s.pop("latency", None)
    return {"stitches": {s["id"]: s for s in m["stitches"]},
            "weights": m["weights"], "target": m["target"], "input": m["input"]}


def test_device_loop_matches_local_run_and_resumes(sshd, supernet, device_python, tmp_path):  # noqa: F811
    remote_dir = tmp_path / "device-home" / "work"
    # 3 s of profiling on the device: the connection drops 1.5 s into it
    common = [str(supernet), "--target", "cpu", "--stitches", STITCHES, "--runs", "3", "--seconds", "3", "-q"]
    local = _job([*common[:-3], "--seconds", "0.05", "-q", "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr[-3000:]

    # First try: the connection drops while the device profiles. One line, exit 2, names the step.
    out = tmp_path / "dev"
    flaky = _flaky_ssh(tmp_path, "--step profile")
    first = _job([*common, "--out", str(out), *_device_args(sshd, device_python, remote_dir)],
                 env_extra={"PATH": flaky["PATH"]})
    assert first.returncode == 2, first.stderr[-3000:]
    err = [ln for ln in first.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "step profile" in err[0] and f"127.0.0.1:{sshd['port']}" in err[0], first.stderr
    assert "Traceback" not in first.stderr
    assert Path(flaky["_marker"]).exists()
    # what the device was sent: the bundle's runtime, graphs, weights, reference and gates
    assert (remote_dir / "bundle" / "esta_runtime" / "check_bundle.py").is_file()
    assert (remote_dir / "reference.npz").is_file() and (remote_dir / "gates.json").is_file()

    # Re-run: nothing is copied again, validation is not run again, the profiler that kept running
    # on the device after the drop is waited for (never started twice), and the job completes.
    second = _job([*common[:-1], "--out", str(out), *_device_args(sshd, device_python, remote_dir)])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sync: 0 files" in second.stderr, second.stderr
    steps = remote_dir / ".steps"
    assert len((steps / "profile.starts").read_text().splitlines()) == 1  # not started twice
    assert len((steps / "validate.starts").read_text().splitlines()) == 1  # not validated twice

    # Records in the store came from the device's profiler, with the device's provenance
    recs = [json.loads(ln) for ln in (out / "profiles" / "cpu.jsonl").read_text().splitlines() if ln.strip()]
    assert recs and all(r["env"]["profiler"] == "bundle profile_device.py" for r in recs)
    assert all(r["remote"]["device"].endswith(f":{sshd['port']}") for r in recs)
    assert all(r["env"]["python"] and "torch" not in r["env"]["runtimes"] for r in recs)
    assert len(recs) == len(STITCHES.split(","))  # measured once, although the first try dropped
    validation = json.loads((out / "device" / "cpu" / "validation.json").read_text())
    assert all(v["passed"] and v["metric"] == "rel_error" and v["samples"] > 0
               for v in validation["stitches"].values())

    # Same report and bundle as the local run, latency aside
    a, b = _manifest_sans_latency(tmp_path / "local" / "bundle" / "cpu"), _manifest_sans_latency(out / "bundle" / "cpu")
    assert a["target"] == b["target"] and a["input"] == b["input"]
    for sid in set(a["stitches"]) & set(b["stitches"]):
        sa, sb = a["stitches"][sid], b["stitches"][sid]
        assert sa["artifact"]["sha256"] == sb["artifact"]["sha256"]
        assert sa["artifact"]["compiled_sha256"] == sb["artifact"]["compiled_sha256"]
        assert (sa["route"], sa["flops"], sa["params"], sa["accuracy"]) == \
               (sb["route"], sb["flops"], sb["params"], sb["accuracy"])
    sel = json.loads((out / "select" / "cpu.json").read_text())
    assert sorted(b["stitches"]) == sorted(sel["selected"])
    lat = json.loads((out / "bundle" / "cpu" / "manifest.json").read_text())["stitches"][0]["latency"]
    assert lat["source"] == "measured"
    ra = json.loads((tmp_path / "local" / "report" / "report.json").read_text())
    rb = json.loads((out / "report" / "report.json").read_text())
    assert set(ra) == set(rb)
    assert (out / "report" / "report.html").is_file()

    # Third run: everything is already done on the device; nothing measured again
    third = _job([*common[:-1], "--out", str(out), *_device_args(sshd, device_python, remote_dir)])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already in" in third.stderr
    assert len([ln for ln in (out / "profiles" / "cpu.jsonl").read_text().splitlines() if ln.strip()]) == len(recs)


def test_device_without_runtime_is_one_line(sshd, supernet, tmp_path):  # noqa: F811
    """A device Python lacking onnxruntime: one line naming the device, the step and the fix."""
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(bare)
    r = _job([str(supernet), "--target", "cpu", "--stitches", "0,1", "--out", str(tmp_path / "o"), "-q",
              *_device_args(sshd, str(bare / "bin" / "python"), tmp_path / "w")])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "step check" in lines[0] and "numpy" in lines[0] and "fix:" in lines[0], r.stderr


def test_tensorrt_target_reaches_the_device_boundary(sshd, supernet, device_python, tmp_path):  # noqa: F811
    """jetson-orin: the build kit reaches the device and build_engines.py runs there; without
    TensorRT on this "device" it stops with one line. Engines on hardware: not verified."""
    remote_dir = tmp_path / "w"
    r = _job([str(supernet), "--target", "jetson-orin", "--stitches", "0,1", "--out", str(tmp_path / "o"), "-q",
              *_device_args(sshd, device_python, remote_dir)])
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "step build-engines" in lines[0] and "TensorRT" in lines[0], r.stderr
    assert (remote_dir / "bundle" / "kit.json").is_file() and (remote_dir / "bundle" / "build_engines.py").is_file()
    assert (remote_dir / "bundle" / "reference.npz").is_file()


def test_bad_device_address_fails_before_any_work(tmp_path, supernet):
    r = _job([str(supernet), "--target", "cpu", "--out", str(tmp_path / "o"), "--device", "root@host:ssh"])
    assert r.returncode == 2 and "port 'ssh' is not a number" in r.stderr
    assert not (tmp_path / "o" / "export").exists()
    r = _job([str(supernet), "--target", "cpu", "--out", str(tmp_path / "o"), "--device", "root@h",
              "--identity", str(tmp_path / "nokey")])
    assert r.returncode == 2 and "--identity file not found" in r.stderr
