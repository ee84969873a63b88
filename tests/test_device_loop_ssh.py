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
    """A venv with nothing but numpy and onnxruntime (tests/fixtures/loopback.py)."""
    from fixtures.loopback import Unavailable, device_venv

    try:
        return device_venv(tmp_path_factory.mktemp("devvenv") / "venv")
    except Unavailable as why:
        pytest.skip(str(why))


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


def _records(out: Path) -> list[dict]:
    store = out / "profiles" / "cpu.jsonl"
    return [json.loads(ln) for ln in store.read_text().splitlines() if ln.strip()] if store.is_file() else []


def test_profile_budget_on_the_device_and_a_killed_device_process_resumes(sshd, supernet, device_python,  # noqa: F811
                                                                           tmp_path):
    """--profile-budget 2 is honoured on the device: its first round times 2 stitches, later rounds
    the predicted front (profiling/compiled.py's rounds). The device-side profiler is killed
    mid-round, as a reboot of the board would; the command stops with one line, and the same
    command again restarts only that round: the result is complete and nothing is measured twice."""
    import signal
    import time

    remote_dir, out = tmp_path / "w", tmp_path / "o"
    cmd = [str(supernet), "--target", "cpu", "--stitches", STITCHES, "--runs", "3", "--seconds", "2",
           "--profile-budget", "2", "--out", str(out), *_device_args(sshd, device_python, remote_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "esta_export", *cmd, "-q"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = remote_dir / ".steps" / "profile.pid"
    deadline = time.monotonic() + 600
    while not pid_file.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.is_file(), proc.communicate()
    time.sleep(0.5)
    os.killpg(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)  # the step's session: wrapper + profiler
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "step profile" in lines[0] and "killed" in lines[0], err
    assert "Traceback" not in err and _records(out) == []

    again = _job(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sync: 0 files" in again.stderr and "--profile-budget 2" in again.stderr, again.stderr
    rounds = json.loads((out / "device" / "cpu" / "state.json").read_text())["profile_rounds"]
    timed = [sid for r in rounds for sid in r]
    assert len(rounds[0]) == 2                      # the budget, not every stitch
    assert len(timed) == len(set(timed))            # no stitch in two rounds
    recs = _records(out)
    assert sorted(r["stitch_id"] for r in recs) == sorted(timed)  # each timed stitch stored once
    steps = remote_dir / ".steps"
    starts = [json.loads(ln)["key"] for ln in (steps / "profile.starts").read_text().splitlines()]
    assert len(starts) == len(rounds) + 1 and starts[0] == starts[1]  # only the killed round ran again
    assert len((steps / "validate.starts").read_text().splitlines()) == 1
    sel = json.loads((out / "select" / "cpu.json").read_text())
    source = {s["id"]: s["latency_source"] for s in sel["stitches"]}
    assert all(source[sid] == "measured" for sid in timed)
    assert all(source[sid] == "predicted" for sid in source if sid not in timed)
    assert set(sel["front"]) <= set(timed)          # the front holds only measured stitches

    third = _job(cmd)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already in" in third.stderr
    assert len(_records(out)) == len(recs)
    assert len((steps / "profile.starts").read_text().splitlines()) == len(starts)


def _device_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if (p.is_file() or p.is_symlink()) and not any(part.startswith(".") or part == "__pycache__"
                                                          for part in p.relative_to(root).parts)}


def test_sync_removes_stale_files_on_the_device_and_nothing_outside(sshd, supernet, device_python,  # noqa: F811
                                                                    tmp_path):
    """Stitches dropped from the plan, an older compile's leftovers and engines built from other
    files are removed from the device's work folder; a link out of it goes, its target stays;
    a folder esta-export did not make is refused, untouched."""
    home, out = tmp_path / "home", tmp_path / "o"
    remote_dir = home / "work"
    base = [str(supernet), "--target", "cpu", "--runs", "3", "--seconds", "0.05", "--out", str(out)]
    first = _job([*base, "--stitches", "0,1,2,3", "-q", *_device_args(sshd, device_python, remote_dir)])
    assert first.returncode == 0, first.stderr[-3000:]
    models = remote_dir / "bundle" / "models"
    assert any("003" in p.name for p in models.iterdir())
    (models / "stitch_099.onnx").write_text("an older compile's graph")
    (remote_dir / "bundle" / "engines").mkdir()
    (remote_dir / "bundle" / "engines" / "stitch_003.plan").write_text("built from other files")
    precious = home / "precious.txt"
    precious.write_text("not esta-export's")
    (remote_dir / "bundle" / "link.txt").symlink_to(precious)

    second = _job([*base, "--stitches", "0,1", *_device_args(sshd, device_python, remote_dir)])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stale files removed there" in second.stderr, second.stderr
    stage = out / "device" / "cpu" / "stage"
    assert _device_files(remote_dir) == _device_files(stage)  # exactly what the plan ships, nothing else
    assert not any(("002" in p.name or "003" in p.name or "099" in p.name) for p in models.iterdir())
    assert not (remote_dir / "bundle" / "engines").exists()
    assert precious.read_text() == "not esta-export's"
    sel = json.loads((out / "select" / "cpu.json").read_text())
    assert set(sel["selected"]) <= {0, 1}

    # a folder that holds someone else's files: refused before anything is copied, nothing removed
    mine = tmp_path / "someone"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    r = _job([*base, "--stitches", "0,1", "-q", *_device_args(sshd, device_python, mine)])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "step sync" in lines[0] and "did not put there" in lines[0], r.stderr
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
