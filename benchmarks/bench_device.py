"""Device-loop overhead (issue 13): wall time of the main job with ``--device`` against a real
OpenSSH server on loopback / the same job run locally; same family, stitches and profile settings.

    nice -n 10 python benchmarks/bench_device.py [--stitches 0,1,2,32,34] [--runs 20] [--seconds 0.5] [--repeat 2]

The "device" is this machine reached over ssh (tests/fixtures/loopback.py: the sshd and the
device-side venv holding only numpy and onnxruntime that the device-loop test uses). Each run
starts from an empty output folder (and, with --device, an empty device folder), so both do the
whole job: export, compile, profile, select, report, bundle. Local and device runs alternate.
``--no-tune`` on both: the device profiler does not tune session settings, so the local run
must not either for the same profile settings.

Where the extra time goes: the device loop's host-observed seconds per step (OUT/device/cpu/
state.json "timings": staging the bundle, check, sync = the copy, validate, profile, fetch =
records into the store), the device-side seconds of each step (its start in .steps/STEP.starts
to its exit status file), and the local run's profile stage (time between its compile and
profile lines) that the device loop replaces. Timings under load are inflated: the load
average is printed. Exits 2 where no sshd (or no device venv) is available.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/fixtures/loopback.py
DEMO = ROOT / "examples" / "demo" / "digits-esta.safetensors"
GOAL = 1.3


def _timed_job(args: list[str]) -> tuple[float, int, list[tuple[float, str]], str]:
    """Run the main job; its wall time, exit status and stderr lines with their arrival times."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "esta_export", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    rc = proc.wait()
    wall = time.perf_counter() - t0
    return wall, rc, lines, "\n".join(ln for _, ln in lines[-15:])


def _at(lines: list[tuple[float, str]], prefix: str) -> float | None:
    return next((t for t, ln in lines if ln.startswith(prefix)), None)


def _device_side(steps: Path) -> dict[str, float]:
    """Seconds each step ran on the device: its starts to its exit status file, summed over keys."""
    out: dict[str, float] = {}
    for starts in steps.glob("*.starts"):
        step = starts.name[:-len(".starts")]
        for line in starts.read_text().splitlines():
            rec = json.loads(line)
            rc = steps / f"{step}-{rec['key']}.rc"
            if rc.is_file():
                out[step] = out.get(step, 0.0) + rc.stat().st_mtime - rec["time"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supernet", default=str(DEMO))
    p.add_argument("--stitches", default="0,1,2,32,34")
    p.add_argument("--runs", default="20")
    p.add_argument("--seconds", default="0.5")
    p.add_argument("--repeat", type=int, default=2, help="local/device pairs, alternating")
    a = p.parse_args(argv)

    from fixtures.loopback import Unavailable, device_venv, loopback_sshd, sshd_executable

    print(f"load average before: {tuple(round(x, 2) for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if sshd_executable() is None:
        print("sshd not available: install openssh-server (apt-get install -y openssh-server); not measured")
        return 2
    common = [a.supernet, "--target", "cpu", "--stitches", a.stitches, "--runs", a.runs, "--seconds", a.seconds,
              "--no-tune"]
    print(f"job: {Path(a.supernet).name} --target cpu --stitches {a.stitches} --runs {a.runs} "
          f"--seconds {a.seconds} --no-tune (fresh output folder each run)")
    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            with loopback_sshd(tmp / "sshd") as sshd:
                py = device_venv(tmp / "venv")
                dev = ["--device", f"{sshd['user']}@127.0.0.1:{sshd['port']}", "--identity", str(sshd["identity"]),
                       "--known-hosts", str(sshd["known_hosts"]), "--device-python", py]
                pairs = []
                for n in range(a.repeat):
                    lw, lrc, ll, ltail = _timed_job([*common, "--out", str(tmp / f"local{n}")])
                    if lrc != 0:
                        print(f"local run failed:\n{ltail}")
                        return 1
                    work = tmp / f"device-work{n}"
                    out = tmp / f"dev{n}"
                    dw, drc, dl, dtail = _timed_job([*common, "--out", str(out), *dev, "--device-dir", str(work)])
                    if drc != 0:
                        print(f"device run failed:\n{dtail}")
                        return 1
                    state = json.loads((out / "device" / "cpu" / "state.json").read_text())
                    sync = next((ln for _, ln in dl if ln.startswith("sync:")), "")
                    local_profile = (_at(ll, "profile:") or 0) - (_at(ll, "compile:") or 0)
                    pairs.append({"local": lw, "device": dw, "local_profile": local_profile,
                                  "timings": state.get("timings", {}), "device_side": _device_side(work / ".steps"),
                                  "sync": sync.split(" sent to ")[0].replace("sync: ", "")})
                    print(f"pair {n + 1}: local {lw:.1f} s, --device {dw:.1f} s, ratio {dw / lw:.2f}")
        except Unavailable as why:
            print(f"loopback device not available: {why}; not measured")
            return 2
    lt, dt = sum(x["local"] for x in pairs), sum(x["device"] for x in pairs)
    ratio = dt / lt
    print(f"wall time, mean of {len(pairs)}: local {lt / len(pairs):.1f} s, --device {dt / len(pairs):.1f} s; "
          f"ratio --device/local {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'})")
    steps = ["stage", "check", "sync", "build-engines", "validate", "profile", "fetch", "predict"]
    mean = {s: sum(x["timings"].get(s, 0.0) for x in pairs) / len(pairs) for s in steps}
    side = {s: sum(x["device_side"].get(s, 0.0) for x in pairs) / len(pairs) for s in ("validate", "profile")}
    loop = sum(mean.values())
    lprof = sum(x["local_profile"] for x in pairs) / len(pairs)
    print("where the device run's time goes (host-observed seconds, mean): "
          + ", ".join(f"{s} {mean[s]:.2f}" for s in steps if mean[s] or s in ("sync", "fetch"))
          + f"; sync copied {pairs[-1]['sync']}")
    print(f"  of which ran on the device: validate {side['validate']:.2f} s, profile {side['profile']:.2f} s; "
          f"ssh and step wrapping: validate {mean['validate'] - side['validate']:.2f} s, "
          f"profile {mean['profile'] - side['profile']:.2f} s")
    print(f"  device loop total {loop:.1f} s vs the local run's profile stage {lprof:.1f} s: "
          f"{loop - lprof:+.1f} s; the rest of the difference ({(dt - lt) / len(pairs) - (loop - lprof):+.1f} s) "
          "is run-to-run noise in export/compile/select/report/bundle")
    print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
