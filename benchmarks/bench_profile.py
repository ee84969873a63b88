"""Profiler benchmark (issue 5): predictor accuracy, selection value, profiling cost, from one run.

    python benchmarks/bench_profile.py [--quick] [--out DIR] [--json PATH] [--only a,b,c]

(a) Predictor. A 71-stitch SN-Net v1 family with the DeiT-Ti/S/B layout (12 blocks; 3/6/12
    heads) at half width (96/192/384) and 112x112 input, random weights, so that every stitch can
    be timed in minutes on 2 cores. Exported, compiled for ``cpu`` (ORT fp32) and ALL stitches
    profiled with ``profile_compiled`` (the product's protocol, stability judged by robust CV,
    threshold 5%, up to 2 re-measures) as ground truth. Then the predictor is fitted on the 14
    stitches (<= 20% of 71) that ``choose_profile_subset`` picks and evaluated on the other 57:
    MAPE, share within +-10% (goal >= 95%), max error; beside it leave-one-out on the 14 (what
    the tool itself reports without ground truth) and on all 71.
(b) Selection value. The trained demo family: export, compile (cpu), profile, then
    ``select_compiled(..., val_data=digits-val.npz)`` (top-1 of the compiled artifacts). For each
    latency budget (the measured front's latencies): the accuracy lost by choosing by FLOPs (with
    the best linear FLOPs->latency fit) instead of by measured latency; Kendall tau FLOPs vs
    latency; both with 95% intervals drawn from the medians' own intervals. Then a second,
    independent ``--fresh`` profile of the same compiled family and the Jaccard similarity of the
    two fronts (interval-aware: ties stay on; goal >= 0.8).
(c) Profiling cost. The demo family's compiled stitches, loaded once, timed (i) with the product's
    protocol (runtime/timing.py defaults: warm-up 0.2 s and 10 calls, >= 50 runs and >= 1 s per
    stitch in blocks of >= 5 calls and 50 ms per visit, rotated rounds, re-measured while robust
    CV > 5% only as long as another attempt lowers it), once judged by ``robust_cv`` and once by
    ``cv``, and (ii) with a fixed trtexec-like protocol (stitch after stitch: 200 ms warm-up, 3 s
    of timed runs, no re-measure; trtexec's --warmUp/--duration defaults). Same artifacts, same
    precision (fp32), loading excluded. Printed: wall time of each and the ratio (goal <= 0.5),
    and how many stitches end with cv < 5% and with robust_cv < 5%.

One run on a shared machine: nothing here asserts a time; load averages are printed at the start
and the end of each part. --quick: a 35-stitch 6-block quarter-size family, shorter protocols.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esta_export.compile import compile_export  # noqa: E402
from esta_export.onnx_export import ExportSettings, export_supernet  # noqa: E402
from esta_export.pareto import jaccard  # noqa: E402
from esta_export.predict import holdout_error, leave_one_out  # noqa: E402
from esta_export.profiling.compiled import profile_compiled, read_compiled, stitch_table  # noqa: E402
from esta_export.profiling.harness import TimingProtocol, profile_runners  # noqa: E402
from esta_export.select import select_compiled  # noqa: E402
from esta_export.supernet import (AnchorConfig, Supernet, SupernetSpec, load_supernet,  # noqa: E402
                                  save_supernet)

DEMO = ROOT / "examples" / "demo" / "digits-esta.safetensors"
VAL = ROOT / "examples" / "demo" / "digits-val.npz"
CV_GOAL = 0.05


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def family(quick: bool) -> SupernetSpec:
    depth, img, widths = (6, 64, (48, 96, 192)) if quick else (12, 112, (96, 192, 384))
    anchors = tuple(AnchorConfig(n, w, depth, h, img_size=img)
                    for n, w, h in zip(("Ti", "S", "B"), widths, (3, 6, 12)))
    return SupernetSpec(anchors, "snnet_v1",
                        space_params={"kernel_size": 2, "stride": 1, "nearest": True})


def export_compile(supernet: Path, work: Path, calibration: Path | None) -> Path:
    t0 = time.perf_counter()
    res = export_supernet(load_supernet(supernet), work / "export", settings=ExportSettings(),
                          fresh=True)
    t1 = time.perf_counter()
    comp = compile_export(work / "export", "cpu", work / "compiled" / "cpu",
                          calibration=calibration, fresh=True)
    print(f"   exported {len(res.summary['stitches'])} stitches in {t1 - t0:.1f} s, compiled "
          f"{len(comp['artifacts'])} for cpu in {time.perf_counter() - t1:.1f} s "
          f"({len(res.summary.get('failed', []))} export / {len(comp['failed'])} compile failures)",
          flush=True)
    return work / "compiled" / "cpu"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


# ---------------------------------------------------------------- (a) predictor
def part_predictor(work: Path, quick: bool) -> dict:
    print(f"\n(a) predictor: load average {load_avg()}", flush=True)
    import torch

    torch.manual_seed(0)
    path = save_supernet(Supernet(family(quick)).eval(), work / "family.safetensors")
    cdir = export_compile(path, work, None)
    t0 = time.perf_counter()
    # Ground truth with the session the product profiles with ('--tune', the main job's default
    # for CPU targets): the untuned 2-thread default left 58 of 71 stitches unstable on 2 vCPUs.
    res = profile_compiled(cdir, "cpu", work / "profile.jsonl", fresh=True, memory=False,
                           cv_metric="robust_cv", min_runs=20 if quick else 30,
                           min_seconds=0.2 if quick else 0.5, tune=True)
    if res.tune:
        print(f"   session: {res.tune.get('choice')} (tuned on this machine)")
    prof_s = time.perf_counter() - t0
    comp, export, _ = read_compiled(cdir)
    rows = stitch_table(comp, export)
    lat = {i: rec["latency_ms"]["median"] for i, rec in res.records.items()}
    rows = [r for r in rows if r["id"] in lat]
    unstable = [i for i, rec in res.records.items() if rec.get("unstable")]
    rcv = np.array([rec["latency_ms"]["robust_cv"] for rec in res.records.values()])
    cv = np.array([rec["latency_ms"]["cv"] for rec in res.records.values()])
    n = len(rows)
    budget = max(1, int(0.2 * n))
    held, model, subset = holdout_error(rows, lat, budget)
    sub_rows = [r for r in rows if r["id"] in set(subset)]
    loo_sub = leave_one_out(sub_rows, [lat[r["id"]] for r in sub_rows])
    loo_all = leave_one_out(rows, [lat[r["id"]] for r in rows])
    vals = sorted(lat.values())
    print(f"   ground truth: {n} stitches profiled in {prof_s:.0f} s; median latency "
          f"{vals[0]:.2f} .. {vals[-1]:.2f} ms; robust CV median {np.median(rcv):.1%} "
          f"(max {rcv.max():.1%}), CV median {np.median(cv):.1%} (max {cv.max():.1%}); "
          f"{len(unstable)} flagged unstable after re-measure")
    print(f"   fitted on {len(subset)} of {n} ({len(subset) / n:.0%}) chosen by "
          f"choose_profile_subset: ids {subset}")
    worst = max(held.errors.items(), key=lambda kv: abs(kv[1]))
    print(f"   held out ({held.n_eval} stitches):  MAPE {_pct(held.mape)}  within +-10% "
          f"{_pct(held.within_10)} (goal >= 95%)  max error {_pct(held.max_ape)} "
          f"(stitch {worst[0]}, {lat[worst[0]]:.2f} ms measured, signed {worst[1]:+.1%})")
    for name, ev in (("leave-one-out on the 14 profiled" if not quick else "leave-one-out on the subset", loo_sub),
                     (f"leave-one-out on all {n}", loo_all)):
        print(f"   {name:<34} ({ev.n_eval} predicted): MAPE {_pct(ev.mape)}  within +-10% "
              f"{_pct(ev.within_10)}  max {_pct(ev.max_ape)}")
    # Diagnostics, not the figure: is the error the model's or the measurement's? On a loaded
    # machine preemptions inflate some stitches' medians; the per-stitch minimum is the least
    # disturbed statistic, and a model that fits it says the additive structure holds.
    ape = {i: abs(v) for i, v in held.errors.items()}
    rcv_by = {i: rec["latency_ms"]["robust_cv"] for i, rec in res.records.items()}
    corr = float(np.corrcoef([ape[i] for i in ape], [rcv_by[i] for i in ape])[0, 1])
    held_min, _, _ = holdout_error(rows, {i: rec["latency_ms"]["min"]
                                          for i, rec in res.records.items()}, budget)
    print(f"   diagnostic: correlation of |held-out error| with the stitch's robust CV {corr:+.2f}; "
          f"same predictor and subset with each stitch's MIN latency as truth: MAPE "
          f"{_pct(held_min.mape)}, within +-10% {_pct(held_min.within_10)}, max "
          f"{_pct(held_min.max_ape)} (the product predicts medians: this is not the goal figure)")
    verdict = "MET" if (held.within_10 or 0) >= 0.95 else "NOT MET"
    print(f"   goal (>= 95% of held-out stitches within +-10%): {verdict}; load average "
          f"{load_avg()}", flush=True)
    return {"stitches": n, "profile_seconds": prof_s, "latency_ms": {str(k): v for k, v in lat.items()},
            "unstable": unstable, "subset": subset, "model": model.to_dict(),
            "holdout": held.to_dict(), "holdout_min_diagnostic": held_min.to_dict(),
            "error_vs_robust_cv_corr": corr, "loo_subset": loo_sub.to_dict(), "loo_all": loo_all.to_dict()}


# ---------------------------------------------------------------- (b) selection value
def part_selection(work: Path, quick: bool) -> tuple[dict, Path]:
    print(f"\n(b) selection value on the demo family: load average {load_avg()}", flush=True)
    cdir = export_compile(DEMO, work, VAL)
    t0 = time.perf_counter()
    profile_compiled(cdir, "cpu", work / "profile.jsonl", fresh=True, memory=False,
                     cv_metric="robust_cv", min_runs=20 if quick else 50,
                     min_seconds=0.2 if quick else 1.0,
                     tune=True)  # as the main job does: session tuned on this machine first
    print(f"   profiled in {time.perf_counter() - t0:.0f} s", flush=True)
    sel = select_compiled(cdir, "cpu", work / "profile.jsonl", val_data=VAL,
                          out_path=work / "select.json")
    by = {s["id"]: s for s in sel["stitches"]}
    print(f"   accuracy: {sel['accuracy_source']}; front (by measured latency): {sel['front']}")
    print(f"   FLOPs front: {sel['flops_front']}; FLOPs-front stitches dominated on this CPU: "
          f"{[d['id'] for d in sel['flops_dominated_on_device']]}")
    tau = sel["kendall_tau"]
    print(f"   Kendall tau FLOPs vs measured latency: {'-' if tau is None else f'{tau:.3f}'} "
          f"(n = {sel['kendall_tau_n']})")
    print(f"   {'budget ms':>9}  {'by latency: id':>14} {'top-1':>6}   {'by FLOPs: id':>12} "
          f"{'top-1':>6} {'lat ms':>7}  accuracy lost")
    for v in sel["selection_value"]:
        lost = ("pick misses the budget" if v["flops_pick_over_budget"] else
                "no pick" if v["accuracy_lost"] is None else f"{100 * v['accuracy_lost']:.1f} points")
        f_id = "-" if v["flops_pick"] is None else v["flops_pick"]
        f_acc = "-" if v["flops_accuracy"] is None else f"{v['flops_accuracy']:.4f}"
        f_lat = "-" if v["flops_pick_latency_ms"] is None else f"{v['flops_pick_latency_ms']:.3f}"
        print(f"   {v['budget_ms']:9.3f}  {str(v['measured_pick']):>14} "
              f"{v['measured_accuracy']:6.4f}   {str(f_id):>12} {f_acc:>6} {f_lat:>7}  {lost}")
    lost = [v["accuracy_lost"] for v in sel["selection_value"] if v["accuracy_lost"] is not None]
    over = sum(bool(v["flops_pick_over_budget"]) for v in sel["selection_value"])
    iv = sel.get("intervals") or {}
    vci, tci = iv.get("selection_value_mean_ci"), iv.get("kendall_tau_ci")
    print(f"   over {len(sel['selection_value'])} budgets: mean accuracy lost "
          f"{100 * np.mean(lost) if lost else 0:.2f} points"
          + (f" (95% interval {100 * vci[0]:.2f}-{100 * vci[1]:.2f})" if vci else "")
          + f" ({iv.get('method')})"
          + f", max {100 * max(lost, default=0):.1f}; FLOPs pick over budget in {over}; Kendall tau "
          + (f"{tci[0]:.3f}-{tci[1]:.3f}" if tci else "n/a")
          + f" ({iv.get('kendall_tau_method')}); load average {load_avg()}", flush=True)
    print(f"   front ties (on the front, indistinguishable from a stitch that dominates them by "
          f"median): {sel.get('front_ties')}")
    rcv = [s["latency_ms"]["robust_cv"] for s in sel["stitches"] if s.get("latency_ms")]
    lats = [s["latency"] for s in sel["stitches"] if s.get("latency_source") == "measured"]
    print(f"   stitches with robust CV < 5%: {sum(v < 0.05 for v in rcv)}/{len(rcv)}; measured latency "
          f"{min(lats):.3f} .. {max(lats):.3f} ms (span {max(lats) / min(lats):.1f}x)")
    # Reproducibility: a second, independent --fresh profile of the same compiled family.
    profile_compiled(cdir, "cpu", work / "profile2.jsonl", fresh=True, memory=False,
                     cv_metric="robust_cv", min_runs=20 if quick else 50,
                     min_seconds=0.2 if quick else 1.0,
                     tune=True)  # as the main job does: session tuned on this machine first
    sel2 = select_compiled(cdir, "cpu", work / "profile2.jsonl", val_data=VAL,
                           out_path=work / "select2.json")
    jac = jaccard(sel["front"], sel2["front"])
    print(f"   second --fresh profile: front {sel2['front']}; Jaccard similarity of the two fronts "
          f"{jac:.2f} (goal >= 0.8); load average {load_avg()}", flush=True)
    del by
    out = {k: sel[k] for k in ("front", "flops_front", "flops_dominated_on_device", "kendall_tau",
                               "kendall_tau_n", "selection_value", "accuracy_source", "intervals",
                               "front_ties")}
    out.update(front_second_run=sel2["front"], front_jaccard=jac)
    return out, cdir


# ---------------------------------------------------------------- (c) profiling cost
def part_cost(cdir: Path, quick: bool) -> dict:
    print(f"\n(c) profiling cost on the demo family: load average {load_avg()}", flush=True)
    comp, export, _ = read_compiled(cdir)
    ids = [a["id"] for a in comp["artifacts"]]
    shape = [1] + [int(d) for d in export["input"]["shape"][1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    # The session the product profiles with: 'profile --tune' (the main job's default for CPU
    # targets) measured on this machine first; both protocols then time the same sessions.
    from esta_export.backends import get_backend
    from esta_export.profiling.tune import apply_choice, tune_session
    from esta_export.targets import load_target

    t0 = time.perf_counter()
    tuned = tune_session(cdir, load_target("cpu"), cdir.parent / "cost-tune.jsonl")
    tune_s = time.perf_counter() - t0
    target, settings = apply_choice(load_target("cpu"), tuned["choice"])
    print(f"   session tuned in {tune_s:.1f} s: {tuned['choice']} (meets the goal: "
          f"{tuned['choice_meets_goal']}); load average {load_avg()}", flush=True)
    backend = get_backend(comp.get("backend") or "onnxruntime")
    by_id = {a["id"]: a for a in comp["artifacts"]}
    runners = {i: backend.load(cdir / by_id[i]["path"], target, settings) for i in ids}
    # The product's protocol (runtime/timing.py defaults: blocks per visit, rotated rounds,
    # re-measure only while it lowers the dispersion).
    adaptive = TimingProtocol(cv_threshold=CV_GOAL) if not quick else \
        TimingProtocol(cv_threshold=CV_GOAL, min_runs=20, min_seconds=0.1)
    fixed = TimingProtocol(warmup_s=0.2, warmup_min=1, min_runs=10,
                           min_seconds=0.3 if quick else 3.0, max_remeasure=0, early_stop_s=0.0,
                           max_seconds=60.0, order="one stitch after the other (trtexec-like)")

    def summary(stats: dict) -> dict:
        cv = np.array([s.cv for s in stats.values()])
        rcv = np.array([s.robust_cv for s in stats.values()])
        return {"n": len(stats), "cv_ok": int((cv < CV_GOAL).sum()),
                "robust_cv_ok": int((rcv < CV_GOAL).sum()), "cv_median": float(np.median(cv)),
                "robust_cv_median": float(np.median(rcv)),
                "attempts": int(sum(s.attempts for s in stats.values())),
                # stopped from early_stop_s on: within the goal, median known to +-ci_goal
                "early_stops": int(sum(s.seconds < adaptive.min_seconds for s in stats.values())),
                "runs": int(sum(s.n for s in stats.values()))}

    out = {}
    for name, metric in (("adaptive (robust_cv)", "robust_cv"), ("fixed 3 s (trtexec-like)", None),
                         ("adaptive (cv)", "cv")):
        t0 = time.perf_counter()
        if metric is None:
            stats = {}
            for i, r in runners.items():
                stats.update(profile_runners({i: r}, inputs=x, protocol=fixed))
        else:
            stats = profile_runners(runners, inputs=x,
                                    protocol=TimingProtocol(**{**adaptive.to_dict(),
                                                               "cv_metric": metric}))
        wall = time.perf_counter() - t0
        out[name] = {"wall_s": wall, **summary(stats),
                     "median_ms": {str(i): s.median for i, s in stats.items()}}
        s = out[name]
        print(f"   {name:<26} wall {wall:6.1f} s  runs {s['runs']:6d}  measurement attempts "
              f"{s['attempts']:3d} (early stops {s['early_stops']:2d})  cv < 5%: {s['cv_ok']:2d}/{s['n']}  robust_cv < 5%: "
              f"{s['robust_cv_ok']:2d}/{s['n']}  (median cv {s['cv_median']:.1%}, robust cv "
              f"{s['robust_cv_median']:.1%}); load average {load_avg()}", flush=True)
    for r in runners.values():
        r.close()
    f = out["fixed 3 s (trtexec-like)"]["wall_s"]
    out["tune_s"], out["session"] = tune_s, tuned["choice"]
    for name in ("adaptive (robust_cv)", "adaptive (cv)"):
        print(f"   wall-time ratio {name} / fixed 3 s: {out[name]['wall_s'] / f:.2f}"
              + (" (goal <= 0.5)" if name == "adaptive (robust_cv)" else "")
              + f"; with the tune counted on the adaptive side: {(out[name]['wall_s'] + tune_s) / f:.2f}")
    med = {k: np.array([v["median_ms"][str(i)] for i in ids]) for k, v in out.items()
           if isinstance(v, dict) and "median_ms" in v}
    ref = med["fixed 3 s (trtexec-like)"]
    for name in ("adaptive (robust_cv)", "adaptive (cv)"):
        d = np.abs(med[name] / ref - 1)
        print(f"   median latency {name} vs fixed: mean |diff| {d.mean():.1%}, max {d.max():.1%}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small family, short protocols")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--only", default="a,b,c", help="parts to run, e.g. 'b,c' (c needs b, or --compiled)")
    ap.add_argument("--compiled", type=Path, default=None,
                    help="with --only c: the demo's compiled cpu folder of an earlier run "
                         "(OUT/demo/compiled/cpu), so part c runs alone")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"bench_profile: work folder {work}; load average at start {load_avg()} "
          f"({os.cpu_count()} CPUs)")
    results: dict = {}
    if "a" in parts:
        results["predictor"] = part_predictor(work / "family", args.quick)
    if "c" in parts and "b" not in parts and args.compiled is not None:
        results["cost"] = part_cost(args.compiled, args.quick)
    elif "b" in parts or "c" in parts:
        results["selection"], cdir = part_selection(work / "demo", args.quick)
        if "c" in parts:
            results["cost"] = part_cost(cdir, args.quick)
    print(f"\nload average at end {load_avg()}; total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
