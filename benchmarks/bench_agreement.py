"""Agreement benchmark (issue 11 item 2): do the profiler's numbers match the tools users trust?

    python benchmarks/bench_agreement.py [--supernet S.safetensors] [--stitches 0,5,9] [--out DIR]
    python benchmarks/bench_agreement.py --tensorrt BUNDLE_DIR   # on the device (see below)

Ratios from one run (load average printed at each step; on a shared machine they scatter):
(a) ONNX Runtime: the median ``esta-export profile`` records for each stitch (the product's
    protocol, the bundle runtime's session settings) / the median of a plain loop over ONE session
    of the same artifact with the same session options (nothing else loaded). Goal 0.9-1.1 idle.
(b) OpenVINO: the profiler's median for the ``intel-cpu`` artifact (IR) / ``benchmark_app -hint
    latency -api sync`` on the same IR with the same inference precision (f32), threads (the
    target's; none given = the plugin's default on both sides) and streams (1, as the latency hint
    sets; read back from both sides). Goal 0.9-1.1 idle. benchmark_app reports the request's own
    latency, so the ratio uses the record's ``compute_ms`` (the same ``InferRequest.latency``, read
    per call); the wall time per call (``latency_ms``, what the app sees and the manifest
    publishes) is printed beside it with its ratio, the difference being the per-call cost of
    calling OpenVINO from Python.
(c) Bundle app: ``app.py --stitch K --runs N`` median (the app's own timing loop) / the latency the
    bundle manifest records for that stitch. Goal 0.85-1.15 idle.
(d) TensorRT (``--tensorrt BUNDLE``, run ON the Jetson/GPU after ``build_engines.py``): the
    bundle's ``profile_device.py`` median (h2d + compute + d2h per call, as the app runs) and
    ``trtexec --loadEngine=PLAN --exportTimes=...`` per-iteration compute time (GPU compute only)
    and end-to-end latency (h2d + compute + d2h), per engine. NOT VERIFIED ON HARDWARE: no TensorRT
    device was at hand; the trtexec flags and its --exportTimes JSON fields ("computeMs",
    "latencyMs") follow NVIDIA's trtexec documentation.

Stitches: by default the fastest, the median and the slowest by FLOPs of the supernet (default:
the shipped demo). Each side's settings are printed beside its number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = ROOT / "examples" / "demo" / "digits-esta.safetensors"
PAIRS = 3
VAL = ROOT / "examples" / "demo" / "digits-val.npz"


def cpu_ticks():
    from esta_export.runtime.timing import cpu_ticks as ticks   # /proc/stat (steal, total)
    return ticks()


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def esta(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "esta_export", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def pick_stitches(supernet: Path) -> list[int]:
    proc = esta("inspect", str(supernet), "--json")
    if proc.returncode:
        sys.exit(f"inspect failed: {proc.stderr.strip()}")
    rows = sorted(json.loads(proc.stdout)["stitches"], key=lambda s: s["flops"])
    return sorted({rows[0]["id"], rows[len(rows) // 2]["id"], rows[-1]["id"]})


def main_job(supernet: Path, target: str, out: Path, ids: list[int], val: Path | None) -> Path:
    args = [str(supernet), "--target", target, "--out", str(out), "--fresh",
            "--stitches", ",".join(map(str, ids))]
    if val is not None and val.is_file():
        args += ["--val-data", str(val)]
    t0 = time.perf_counter()
    proc = esta(*args)
    if proc.returncode:
        sys.exit(f"main job for {target} failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"   main job ({target}, stitches {ids}) in {time.perf_counter() - t0:.0f} s; load {load_avg()}",
          flush=True)
    return out


def records(store: Path) -> dict[int, dict]:
    out = {}
    for line in store.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[int(rec["stitch_id"])] = rec
    return out


def reprofile(job: Path, target: str, sid: int) -> dict:
    """``esta-export profile --fresh --stitches K`` on the main job's compiled folder and store:
    the product's command and protocol, the session the main job tuned (read back from the store's
    tune file), a fresh process; returns the new record."""
    store = job / "profiles" / f"{target}.jsonl"
    proc = esta("profile", str(job / "compiled" / target), "--target", target, "--store", str(store),
                "--fresh", "--stitches", str(sid), "--no-memory")
    if proc.returncode:
        sys.exit(f"profile of stitch {sid} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return records(store)[sid]


def paired(name: str, ours_first: float, measure_ours, measure_ref, pairs: int, lo: float, hi: float,
           extra: str = "") -> float:
    """Profiler and reference measured in turn, ``pairs`` times: a shared VM drifts by tens of
    percent over a minute, so a ratio is only meaningful between measurements taken next to each
    other. ``ours_first`` (the main job's own record) is printed beside them, not paired. Returns
    the median of the per-pair ratios."""
    ratios, ours_all, ref_all = [], [], []
    t0 = cpu_ticks()
    for k in range(pairs):
        # Alternate who goes first, so a steady drift does not favour one side.
        if k % 2 == 0:
            ours = measure_ours()
            ref = measure_ref()
        else:
            ref = measure_ref()
            ours = measure_ours()
        ratios.append(ours / ref)
        ours_all.append(ours)
        ref_all.append(ref)
    r = float(np.median(ratios))
    t1 = cpu_ticks()
    if t0 and t1 and t1[1] > t0[1]:
        extra += f"; CPU steal meanwhile {(t1[0] - t0[0]) / (t1[1] - t0[1]):.1%}"
    ok = "within" if lo <= r <= hi else "OUTSIDE"
    print(f"   {name:<10} profiler {np.median(ours_all):8.3f} ms  reference {np.median(ref_all):8.3f} ms  "
          f"median pair ratio {r:5.2f} ({ok} {lo}-{hi}); pairs {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"main job's record {ours_first:.3f} ms{extra}",
          flush=True)
    return r


# ---------------------------------------------------------------- (a) ONNX Runtime


def plain_ort_loop(path: Path, session: dict, shape: list[int], seconds: float) -> tuple[float, dict]:
    """One session, nothing else loaded, the same session options; median of a timed loop."""
    import onnxruntime as ort

    from esta_export.runtime.session import SessionSettings, ort_session_options

    settings = SessionSettings.from_dict(session)
    so = ort_session_options(ort, settings)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t_end = time.perf_counter() + 0.2
    while time.perf_counter() < t_end:
        sess.run(None, {name: x})
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 50:
        t = time.perf_counter_ns()
        sess.run(None, {name: x})
        times.append((time.perf_counter_ns() - t) / 1e6)
    return float(np.median(times)), settings.to_dict()


def part_ort(job: Path, seconds: float) -> dict:
    print(f"\n(a) ONNX Runtime: profiler vs a plain single-session loop; load {load_avg()}")
    comp = json.loads((job / "compiled" / "cpu" / "compile.json").read_text())
    recs = records(job / "profiles" / "cpu.jsonl")
    out = {}
    for art in comp["artifacts"]:
        rec = recs.get(int(art["id"]))
        if rec is None:
            continue
        if not out:
            from esta_export.runtime.session import SessionSettings

            settings = SessionSettings.from_dict(rec["session"]).to_dict()
            print(f"   both sides: session {settings}; profiler protocol: blocks of >= "
                  f"{rec['protocol']['block_calls']} calls and {rec['protocol']['block_ms']} ms per "
                  f"visit, {len(recs)} stitches loaded; plain loop: 1 session, {seconds} s")
        sid, path = int(art["id"]), job / "compiled" / "cpu" / art["path"]
        out[art["id"]] = paired(
            f"stitch {sid}", rec["latency_ms"]["median"],
            lambda: reprofile(job, "cpu", sid)["latency_ms"]["median"],
            lambda: plain_ort_loop(path, rec["session"], rec["input_shape"], seconds)[0],
            PAIRS, 0.9, 1.1, f"  [first record's 95% CI {rec['latency_ms']['median_ci'][0]:.3f}-"
                             f"{rec['latency_ms']['median_ci'][1]:.3f}]")
    print(f"   load {load_avg()}")
    return out


# ---------------------------------------------------------------- (b) OpenVINO


def benchmark_app(xml: Path, shape: list[int], threads: int | None, seconds: float,
                  report: Path, hint: str = "latency", streams: int | None = None,
                  pinning: bool | None = None) -> tuple[float, dict]:
    """benchmark_app's median; with explicit threads its UI wants -hint none plus -nstreams."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    report.mkdir(parents=True, exist_ok=True)
    # The profiler's exact compile config, handed over with -load_config: benchmark_app's own
    # flags cannot combine a hint with -nthreads/-nstreams, and the hint also sets properties the
    # flags do not (a THROUGHPUT-hinted model with 1 stream is not the same as '-hint none').
    config = {"CPU": {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32",
                      **({"INFERENCE_NUM_THREADS": str(threads)} if threads else {}),
                      **({"NUM_STREAMS": str(streams)} if streams else {}),
                      **({"ENABLE_CPU_PINNING": "YES" if pinning else "NO"} if pinning is not None else {})}}
    (report / "config.json").write_text(json.dumps(config))
    # The same artifact: a dynamic-batch IR stays dynamic (-data_shape feeds the shape). '-shape'
    # reshapes it to a static model first, which the CPU plugin runs 15-20% faster at batch 1 -
    # a different artifact from the one the profiler and the bundle run.
    import openvino as ov
    dynamic = ov.Core().read_model(str(xml)).inputs[0].get_partial_shape().is_dynamic
    shape_flag = "-data_shape" if dynamic else "-shape"
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-api", "sync", "-load_config", str(report / "config.json"),
           "-t", str(max(1, round(seconds))), shape_flag, f"[{','.join(map(str, shape))}]",
           "-report_type", "no_counters", "-report_folder", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    m = re.search(r"Median:\s*([\d.]+)\s*(ms|us)", text)
    if proc.returncode or not m:
        raise RuntimeError(f"benchmark_app failed: {text.strip().splitlines()[-3:]}")
    seen = {k: v for k, v in re.findall(r"\b(NUM_STREAMS|INFERENCE_NUM_THREADS|INFERENCE_PRECISION_HINT|"
                                        r"PERFORMANCE_HINT|ENABLE_CPU_PINNING):\s*(\S+)", text)}
    med = float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)
    return med, {"command": " ".join(cmd[1:]) + f"  (config {json.dumps(config)})", **seen}


def part_openvino(job: Path, seconds: float) -> tuple[dict, dict]:
    import openvino as ov

    print(f"\n(b) OpenVINO: profiler vs benchmark_app -hint latency -api sync; load {load_avg()}")
    cdir = job / "compiled" / "intel-cpu"
    comp = json.loads((cdir / "compile.json").read_text())
    recs = records(job / "profiles" / "intel-cpu.jsonl")
    out, wall_out = {}, {}
    for art in comp["artifacts"]:
        rec = recs.get(int(art["id"]))
        if rec is None:
            continue
        # The settings the record was measured with (the target's, or --tune's choice).
        sess = rec.get("session") or {}
        threads = sess.get("threads") or None
        hint = str(sess.get("performance_hint") or "LATENCY")
        core = ov.Core()
        pin = sess.get("cpu_pinning")
        cfg = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32",
               **({"INFERENCE_NUM_THREADS": threads} if threads else {}),
               **({"ENABLE_CPU_PINNING": bool(pin)} if pin is not None else {})}
        cm = core.compile_model(core.read_model(str(cdir / art["path"])), "CPU", cfg)
        ours = {k: str(cm.get_property(k)) for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS",
                                                     "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT",
                                                     "ENABLE_CPU_PINNING")}
        # benchmark_app gets the pinning the profiler's model really ran with (the plugin's own
        # choice when the record leaves it unset), so both sides run alike.
        pin = ours["ENABLE_CPU_PINNING"] == "True"
        del cm
        med, seen = benchmark_app(cdir / art["path"], rec["input_shape"], threads, seconds,
                                  job / "bench_app" / str(art["id"]), hint,
                                  int(ours["NUM_STREAMS"]), pin)
        if not out:
            print(f"   profiler: record session {sess}; compiled with {cfg} -> plugin reports {ours}")
            print(f"   benchmark_app: {seen.pop('command')} -> reports {seen}")
        sid, xml = int(art["id"]), cdir / art["path"]
        walls: list[float] = []
        refs: list[float] = []

        def ours_compute(sid=sid) -> float:
            # benchmark_app reports the request's own latency (C++ compute): compare it with the
            # same quantity, which the record keeps as compute_ms; the wall time is printed below.
            new = reprofile(job, "intel-cpu", sid)
            walls.append(new["latency_ms"]["median"])
            if not new.get("compute_ms"):   # never compare wall time under the compute label
                sys.exit(f"stitch {sid}: the profile record has no compute_ms (OpenVINO's own time)")
            return new["compute_ms"]["median"]

        def theirs(sid=sid, xml=xml) -> float:
            refs.append(benchmark_app(xml, rec["input_shape"], threads, seconds, job / "bench_app" / str(sid),
                                      hint, int(ours["NUM_STREAMS"]), pin)[0])
            return refs[-1]

        first = (rec.get("compute_ms") or rec["latency_ms"])["median"]
        out[art["id"]] = paired(f"stitch {sid}", first, ours_compute, theirs, PAIRS, 0.9, 1.1)
        wr = [w / r for w, r in zip(walls, refs)]
        wall_out[art["id"]] = float(np.median(wr))
        print(f"   {'':<10} (compute_ms, OpenVINO's own per-request time). Wall time per call as the "
              f"app sees it {np.median(walls):.3f} ms: wall / benchmark_app {np.median(wr):.2f} "
              f"(pairs {', '.join(f'{v:.2f}' for v in wr)}), i.e. "
              f"{1e3 * (np.median(walls) - np.median(refs)):.0f} us per call around infer()", flush=True)
    print(f"   load {load_avg()}")
    return out, wall_out


# ---------------------------------------------------------------- (c) bundle app


def part_bundle(job: Path, runs: int, target: str = "cpu") -> dict:
    print(f"\n(c) bundle app ({target}): app.py --stitch K --runs {runs} vs the manifest; load {load_avg()}")
    bundle = job / "bundle" / target
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(f"   manifest session: {manifest.get('session')}")
    out = {}
    for s in manifest["stitches"]:
        lat = (s.get("latency") or {}).get("median")
        if lat is None:
            continue
        # The app started PAIRS times (each its own process, a few seconds apart): one short run
        # is one draw from a machine that drifts by tens of percent within a minute.
        meds = []
        for _ in range(PAIRS):
            proc = subprocess.run([sys.executable, str(bundle / "app.py"), "--stitch", str(s["id"]),
                                   "--runs", str(runs), "--no-verify"], capture_output=True, text=True,
                                  cwd=bundle)
            m = re.search(r"median ([\d.]+) ms", proc.stdout)
            if proc.returncode or not m:
                print(f"   stitch {s['id']}: app failed: {proc.stderr.strip()[-200:]}")
                break
            meds.append(float(m.group(1)))
        if not meds:
            continue
        app_med = float(np.median(meds))
        r = app_med / lat
        ok = "within" if 0.85 <= r <= 1.15 else "OUTSIDE"
        print(f"   stitch {s['id']:<4} app {app_med:8.3f} ms (median of {len(meds)} app runs: "
              f"{', '.join(f'{v:.3f}' for v in meds)})  manifest {lat:8.3f} ms  ratio {r:5.2f} "
              f"({ok} 0.85-1.15)", flush=True)
        out[s["id"]] = r
    print(f"   load {load_avg()}")
    return out


# ---------------------------------------------------------------- (d) TensorRT, on the device


def part_tensorrt(bundle: Path, seconds: float) -> int:
    """On the device: profile_device.py vs trtexec --loadEngine --exportTimes per engine.
    NOT VERIFIED ON HARDWARE."""
    print(f"(d) TensorRT (NOT VERIFIED ON HARDWARE): profile_device.py vs trtexec; load {load_avg()}")
    trtexec = shutil.which("trtexec") or next((p for p in ("/usr/src/tensorrt/bin/trtexec",)
                                               if Path(p).is_file()), None)
    if trtexec is None:
        print("   trtexec not found (on JetPack: /usr/src/tensorrt/bin/trtexec)")
        return 2
    proc = subprocess.run([sys.executable, str(bundle / "profile_device.py"), "--bundle", str(bundle)],
                          capture_output=True, text=True)
    if proc.returncode:
        print(f"   profile_device.py failed: {proc.stderr.strip()}")
        return 1
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    manifest = json.loads((bundle / "manifest.json").read_text())
    engines = {int(s["id"]): s.get("engine") for s in manifest["stitches"]}
    name = manifest["input"].get("name", "pixels")
    for rec in recs:
        eng = engines.get(int(rec["stitch_id"])) or {}
        plan = bundle / eng.get("path", "")
        if not plan.is_file():
            print(f"   stitch {rec['stitch_id']}: no engine at {plan}")
            continue
        shape = "x".join(map(str, rec["input_shape"]))
        with tempfile.TemporaryDirectory() as tmp:
            times = Path(tmp) / "times.json"
            cmd = [trtexec, f"--loadEngine={plan}", f"--shapes={name}:{shape}", "--warmUp=200",
                   f"--duration={seconds:g}", "--useSpinWait", f"--exportTimes={times}"]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode or not times.is_file():
                print(f"   stitch {rec['stitch_id']}: trtexec failed: {p.stdout.strip()[-200:]}")
                continue
            it = json.loads(times.read_text())
        compute = float(np.median([t["computeMs"] for t in it]))
        e2e = float(np.median([t.get("latencyMs", t["computeMs"]) for t in it]))
        ours = rec["latency_ms"]["median"]
        print(f"   stitch {rec['stitch_id']:<4} profiler {ours:.3f} ms (h2d+compute+d2h)  trtexec "
              f"compute {compute:.3f} ms, end-to-end {e2e:.3f} ms  ratio to end-to-end {ours / e2e:.2f}, "
              f"to compute {ours / compute:.2f}  [{' '.join(cmd[1:])}]")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--supernet", type=Path, default=DEMO)
    ap.add_argument("--val-data", type=Path, default=VAL)
    ap.add_argument("--stitches", default=None, help="ids (default: fastest, median, slowest by FLOPs)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=3.0, help="reference tools' timed seconds per stitch")
    ap.add_argument("--app-runs", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=3, help="profiler/reference measured in turn this many times")
    ap.add_argument("--only", default="a,b,c")
    ap.add_argument("--tensorrt", type=Path, metavar="BUNDLE", help="run part (d) on this device")
    args = ap.parse_args()
    global PAIRS
    PAIRS = max(1, args.pairs)
    if args.tensorrt:
        return part_tensorrt(args.tensorrt, args.seconds)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-agreement-"))
    ids = [int(i) for i in args.stitches.split(",")] if args.stitches else pick_stitches(args.supernet)
    print(f"bench_agreement: {args.supernet.name}, stitches {ids}, work {work}; load {load_avg()} "
          f"({os.cpu_count()} CPUs)")
    parts = set(args.only.split(","))
    results: dict = {"stitches": ids, "load_start": os.getloadavg()}
    if parts & {"a", "c"}:
        job = main_job(args.supernet, "cpu", work / "cpu", ids, args.val_data)
        if "a" in parts:
            results["onnxruntime"] = part_ort(job, args.seconds)
        if "c" in parts:
            results["bundle_app"] = part_bundle(job, args.app_runs)
    if "b" in parts:
        job = main_job(args.supernet, "intel-cpu", work / "ov", ids, args.val_data)
        results["openvino"], results["openvino_wall"] = part_openvino(job, args.seconds)
        if "c" in parts:
            results["bundle_app_openvino"] = part_bundle(job, args.app_runs, "intel-cpu")
    for k in ("onnxruntime", "openvino", "openvino_wall", "bundle_app", "bundle_app_openvino"):
        if results.get(k):
            v = list(results[k].values())
            print(f"{k}: median ratio {np.median(v):.2f} (range {min(v):.2f}-{max(v):.2f}, n={len(v)})")
    results["load_end"] = os.getloadavg()
    print(f"load average at end {load_avg()}")
    (work / "agreement.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
