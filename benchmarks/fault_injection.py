"""Fault injection: kill -9 the main job at random moments, re-run it, compare with a clean run.

    python benchmarks/fault_injection.py [--supernet FILE] [-n 20] [--seed 0] [--stitches IDS]
                                         [--runs R] [--seconds S] [--work DIR] [--keep]

1. One clean run of ``esta-export SUPERNET --target cpu --out DIR`` (timed: T).
2. N times: start the same command in a fresh folder, SIGKILL its whole process group after a
   delay drawn uniformly from [0, T) (seeded), then run the same command again to completion.
3. A re-run is *complete* when it exits 0 and every stage summary exists (export.json,
   compile.json, profiles/cpu.jsonl, select/cpu.json, report/report.json, bundle/cpu/manifest.json).
   It is *identical* when every artifact file's sha256 equals the clean run's, except the files
   that legitimately hold measured timings or clock times (EXCLUDED below, each with its reason).
4. Crash overhead = mean over crashes of (time until the kill + time of the re-run) / T.

Defaults: SUPERNET is examples/demo/digits-esta.safetensors when present, else a generated tiny
supernet (2 anchors, 6 stitches). ``--runs``/``--seconds`` shorten profiling (passed to the run),
``--stitches`` limits the stitches: both are printed in the summary line's header so a figure
always says what was run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "digits-esta.safetensors"
TARGET = "cpu"

# Files compared byte for byte with the clean run: every file of these folders (two clean runs
# give identical bytes here; checked, see docs/reliability.md).
COMPARED = ("export", f"compiled/{TARGET}")
# The bundle holds the *selected* stitches in the selection's order, and the selection orders by
# measured latency, so two clean runs already write different bundle bytes (graphs re-pointed into
# a weights file laid out in that order, README/manifest latency tables). The bundle is therefore
# checked twice: (1) the re-run's own bundle opens with every checksum verified and holds exactly
# the stitches its selection chose; (2) the bundle stage re-run on the re-run's export + compiled
# folders with the CLEAN run's selection file gives the same bytes as on the clean folders, except
# the files that carry measured latencies or clock time:
BUNDLE_EXCLUDED = {
    "manifest.json": "per-stitch measured latency statistics and the creation time (compared without them)",
    "README.md": "table of measured latencies",
}
SUMMARIES = ("export/export.json", f"compiled/{TARGET}/compile.json", f"profiles/{TARGET}.jsonl",
             f"select/{TARGET}.json", "report/report.json", f"bundle/{TARGET}/manifest.json")


def _tree(base: Path, skip=()) -> dict[str, str]:
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
            and p.relative_to(base).as_posix() not in skip} if base.is_dir() else {}


# compile.json says per artifact whether this run compiled it or reused it ("reused"): resume
# bookkeeping, so it is compared without that flag.
BOOKKEEPING = {f"compiled/{TARGET}/compile.json": "per-artifact 'reused' flag"}


def _without_reused(path: Path) -> str:
    doc = json.loads(path.read_text())
    for art in doc.get("artifacts", []):
        art.pop("reused", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def artifact_hashes(out: Path) -> dict[str, str]:
    hashes = {f"{top}/{k}": v for top in COMPARED for k, v in _tree(out / top).items()}
    for rel in BOOKKEEPING:
        if (out / rel).is_file():
            hashes[rel] = _without_reused(out / rel)
    return hashes


def manifest_without_timings(bundle: Path) -> dict | None:
    path = bundle / "manifest.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    m.pop("created", None)
    for st in m.get("stitches", []):
        st.pop("latency", None)
    m["files"] = [f for f in m.get("files", []) if f["path"] not in BUNDLE_EXCLUDED]
    return m


def rebundle(out: Path, selection: Path) -> tuple[dict[str, str], dict | None]:
    """The bundle stage on ``out``'s export + compiled folders with a fixed selection file."""
    dest = out / "bundle-fixed-selection"
    shutil.rmtree(dest, ignore_errors=True)
    rc, _, log = run([sys.executable, "-m", "esta_export", "bundle", str(out), "--target", TARGET,
                      "--selection", str(selection), "--out", str(dest)])
    if rc != 0:
        return {"<bundle failed>": log[-200:]}, None
    return _tree(dest, BUNDLE_EXCLUDED), manifest_without_timings(dest)


def own_bundle_ok(out: Path) -> bool:
    """The run's own bundle verifies and holds exactly the selected stitches."""
    sys.path.insert(0, str(ROOT))
    from esta_export.errors import EstaError
    from esta_export.runtime import Bundle
    try:
        b = Bundle.open(out / "bundle" / TARGET, verify=True)
    except EstaError as err:
        print(f"    own bundle refused: {err}")
        return False
    ids = {s.id for s in b.stitches()}
    b.close()
    sel = json.loads((out / "select" / f"{TARGET}.json").read_text())
    return ids == set(sel["selected"])


def command(supernet: Path, out: Path, args) -> list[str]:
    cmd = [sys.executable, "-m", "esta_export", str(supernet), "--target", TARGET, "--out", str(out), "-q"]
    if args.stitches:
        cmd += ["--stitches", args.stitches]
    if args.runs:
        cmd += ["--runs", str(args.runs)]
    if args.seconds:
        cmd += ["--seconds", str(args.seconds)]
    return cmd


def run(cmd: list[str], kill_after: float | None = None) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)   # its own process group: kill workers too
    if kill_after is not None:
        try:
            p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    out, _ = p.communicate()
    return p.returncode, time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", type=Path, default=None)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stitches", default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the output folders")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="esta-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    supernet = args.supernet or (DEMO if DEMO.is_file() else None)
    if supernet is None:
        sys.path.insert(0, str(ROOT / "tests" / "corpus"))
        sys.path.insert(0, str(ROOT))
        import esta_corpus
        supernet = esta_corpus.tiny_supernet(work / "tiny.safetensors")
    print(f"supernet {supernet}; stitches {args.stitches or 'all'}; runs {args.runs or 'default'}; "
          f"seconds {args.seconds or 'default'}; N={args.n}; seed {args.seed}; work {work}")

    clean = work / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    rc, t_clean, log = run(command(supernet, clean, args))
    if rc != 0:
        print(log)
        print(f"fault injection: the clean run failed (exit {rc})")
        return 1
    ref = artifact_hashes(clean)
    selection = clean / "select" / f"{TARGET}.json"
    ref_bundle, ref_manifest = rebundle(clean, selection)
    print(f"clean run: {t_clean:.1f} s; compared byte for byte: {len(ref)} files under "
          f"{', '.join(COMPARED)} and {len(ref_bundle)} bundle files (fixed selection); bundle files "
          f"compared without timings: " + ", ".join(f"{k} ({v})" for k, v in BUNDLE_EXCLUDED.items()))

    rng = random.Random(args.seed)
    complete = identical = 0
    overheads = []
    for i in range(args.n):
        out = work / f"crash{i:02d}"
        shutil.rmtree(out, ignore_errors=True)
        delay = rng.uniform(0, t_clean)
        rc1, t1, _ = run(command(supernet, out, args), kill_after=delay)
        killed = rc1 == -signal.SIGKILL
        rc2, t2, log2 = run(command(supernet, out, args))
        ok = rc2 == 0 and all((out / s).is_file() for s in SUMMARIES)
        hashes = artifact_hashes(out)
        diff = sorted(k for k in set(ref) | set(hashes) if ref.get(k) != hashes.get(k))
        if ok:
            ok = own_bundle_ok(out)
            bundle, manifest = rebundle(out, selection)
            # Rebuilt now, not once at the start: the bundle copies the runtime's sources, which
            # may change in a working tree during a long run.
            ref_bundle, ref_manifest = rebundle(clean, selection)
            diff += sorted(f"bundle:{k}" for k in set(ref_bundle) | set(bundle) if ref_bundle.get(k) != bundle.get(k))
            if manifest != ref_manifest:
                diff.append("bundle:manifest.json (without timings)")
        same = ok and not diff
        complete += ok
        identical += same
        overheads.append((t1 + t2) / t_clean)
        note = "" if same else f"  differs: {diff[:5]}" if diff else ("" if ok else f"  re-run exit {rc2}: {log2[-300:]}")
        print(f"  crash {i:2d}: kill at {delay:5.1f} s ({'killed' if killed else f'finished first, exit {rc1}'}), "
              f"re-run {t2:5.1f} s, {'complete' if ok else 'INCOMPLETE'}, "
              f"{'identical' if same else 'DIFFERENT'}{note}")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    overhead = sum(overheads) / len(overheads)
    print(f"fault injection: {complete}/{args.n} re-runs complete, {identical}/{args.n} identical artifacts, "
          f"crash overhead {overhead:.2f}x (kill + re-run vs one clean run of {t_clean:.1f} s)")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if complete == identical == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
