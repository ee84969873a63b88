"""Deadline governor vs static stitch choices under a competing CPU load, from one run.

    python benchmarks/bench_governor.py [BUNDLE] [--deadline-ms D] [--seconds 40] [--on 5 --off 5]
                                        [--hogs N] [--plot docs/governor.png] [--json PATH]

BUNDLE: a bundle folder (default: out/demo/bundle/cpu, which the README's main job on the shipped
demo writes). The script

1. times every stitch of the bundle's front on this machine with the competitor off ("idle"), the
   same stream loop as below, and places the deadline between the fastest and the slowest
   stitch's idle p95 (the midpoint, unless --deadline-ms);
2. runs three policies on the same stream for --seconds each (in --rounds rotated turns, so
   the drift of the machine's other load hits all three alike), while --hogs CPU-bound processes
   (default: one, another process taking a core) are switched on and off in a fixed pattern (--off seconds off, then
   --on seconds on, repeated; each hog also exits on its own after its on-phase, and all are
   killed when the policy ends or the script stops):
   - governor: esta_runtime's Governor over the whole front;
   - static best: the most accurate stitch whose idle p95 fits the deadline;
   - static fastest: the fastest stitch;
   every policy runs through the same Governor code path (a static one governs a single stitch), so
   the per-call overhead is the same;
3. prints per policy the deadline-miss rate and the mean validated accuracy of the stitches used
   (weighted by calls), and checks the goal: governor miss rate <= 5% while keeping >= 90% of the
   accuracy gap between static fastest and static best;
4. plots the governor's first round (latency per call and the active stitch over time, competitor
   phases shaded) to --plot.

The stream: one input every --period-ms (default: the deadline, a camera delivering frames at the
deadline's rate); a call that ends late starts the next one at once (no backlog). Latency is the
inference call as the governor times it. The machine this was written on is shared: the load
average is printed before and after every part, and a figure taken at a load above the core count
is a lower bound on what a quiet machine shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from esta_export.runtime import Bundle  # noqa: E402
from esta_export.runtime.governor import Governor  # noqa: E402

# A hog spins until killed, or on its own after argv[1] seconds (never outlives the benchmark long).
HOG = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


class Competitor:
    """CPU-bound processes switched on and off in a fixed pattern (off first)."""

    def __init__(self, hogs: int, on_s: float, off_s: float) -> None:
        self.hogs, self.on_s, self.off_s = hogs, on_s, off_s
        self.procs: list[subprocess.Popen] = []

    def phase_on(self, t: float) -> bool:
        """Whether the competitor is on at ``t`` seconds into a policy's run."""
        return (t % (self.on_s + self.off_s)) >= self.off_s

    def set(self, on: bool) -> None:
        if on and not self.procs:
            self.procs = [subprocess.Popen([sys.executable, "-c", HOG, str(self.on_s + 1.0)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                          for _ in range(self.hogs)]
        elif not on and self.procs:
            self.stop()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def stream(gov: Governor, inputs: list[np.ndarray], seconds: float | None, period_s: float,
           competitor: Competitor | None, max_calls: int | None = None) -> list[dict]:
    """Run ``gov`` on a paced stream for ``seconds`` (or ``max_calls``); returns per call
    {t, stitch, latency_ms, missed, switch_in, competitor}."""
    out = []
    t0 = time.perf_counter()
    next_t, i = t0, 0
    try:
        while True:
            now = time.perf_counter()
            rel = now - t0
            if (seconds is not None and rel >= seconds) or (max_calls is not None and i >= max_calls):
                break
            on = competitor is not None and competitor.phase_on(rel)
            if competitor is not None:
                competitor.set(on)
            if now < next_t:
                time.sleep(next_t - now)
            c = gov.infer(inputs[i % len(inputs)])
            i += 1
            out.append({"t": c.t - t0, "stitch": c.stitch_id, "latency_ms": c.latency_ms, "missed": c.missed,
                        "switch_in": c.switch_in, "competitor": on})
            next_t = max(next_t + period_s, time.perf_counter())
    finally:
        if competitor is not None:
            competitor.stop()
    return out


def summarize(name: str, deadline: float, accuracy: dict, calls: list[dict], govs: list[Governor]) -> dict:
    """Figures of one policy over all its rounds (from the calls themselves)."""
    lat = np.array([c["latency_ms"] for c in calls])
    on = np.array([c["competitor"] for c in calls], bool)
    missed = lat > deadline
    acc = [accuracy[c["stitch"]] for c in calls if accuracy.get(c["stitch"]) is not None]
    per: dict = {}
    for c in calls:
        per[c["stitch"]] = per.get(c["stitch"], 0) + 1
    stats = [g.stats() for g in govs]
    return {"policy": name, "calls": len(calls), "misses": int(missed.sum()), "miss_rate": float(missed.mean()),
            "mean_accuracy": float(np.mean(acc)) if acc else None,
            "switches": sum(st["switches"] for st in stats), "flaps": sum(st["flaps"] for st in stats),
            "switch_in_misses": sum(st["switch_in_misses"] for st in stats),
            "miss_rate_competitor_on": float(missed[on].mean()) if on.any() else None,
            "miss_rate_competitor_off": float(missed[~on].mean()) if (~on).any() else None,
            "p95_ms": float(np.percentile(lat, 95)), "median_ms": float(np.median(lat)),
            "calls_per_stitch": per, "load_after": os.getloadavg()}


def plot(path: Path, calls: list[dict], deadline: float, front: list, competitor: Competitor,
         seconds: float, static_best: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([c["t"] for c in calls])
    lat = np.array([c["latency_ms"] for c in calls])
    level = {lv["id"]: i for i, lv in enumerate(front)}
    act = np.array([level[c["stitch"]] for c in calls])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    period = competitor.on_s + competitor.off_s
    for ax in (a1, a2):
        start = competitor.off_s
        while start < seconds:
            ax.axvspan(start, min(start + competitor.on_s, seconds), color="tab:red", alpha=0.08, lw=0)
            start += period
    missed = lat > deadline
    a1.scatter(t[~missed], lat[~missed], s=2, color="tab:blue", label="call latency")
    a1.scatter(t[missed], lat[missed], s=4, color="tab:red", label="missed")
    a1.axhline(deadline, color="k", lw=1, ls="--", label=f"deadline {deadline:.3g} ms")
    a1.set_yscale("log")
    a1.set_ylabel("latency (ms)")
    a1.legend(loc="upper right", fontsize=8, markerscale=3)
    a1.set_title(title, fontsize=10)
    a2.step(t, act, where="post", color="tab:green", lw=1)
    a2.axhline(level[static_best], color="tab:gray", lw=1, ls=":", label="static best (idle)")
    a2.set_yticks(range(len(front)))
    a2.set_yticklabels([f"{lv['id']} ({100 * lv['accuracy']:.1f}%)" if lv["accuracy"] is not None
                        else str(lv["id"]) for lv in front], fontsize=7)
    a2.set_ylabel("active stitch (top-1)")
    a2.set_xlabel("time (s); shaded: competing CPU load on")
    a2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", type=Path, default=ROOT / "out" / "demo" / "bundle" / "cpu")
    p.add_argument("--deadline-ms", type=float, default=None)
    p.add_argument("--quantile", type=float, default=0.95)
    p.add_argument("--seconds", type=float, default=40.0, help="stream length per policy (all rounds)")
    p.add_argument("--rounds", type=int, default=2, help="rotated rounds the policies take turns in")
    p.add_argument("--on", type=float, default=5.0, help="seconds the competitor is on per cycle")
    p.add_argument("--off", type=float, default=5.0, help="seconds it is off per cycle (first)")
    p.add_argument("--hogs", type=int, default=1, help="CPU-bound competitor processes (default 1)")
    p.add_argument("--period-ms", type=float, default=None, help="input period (default: the deadline)")
    p.add_argument("--idle-calls", type=int, default=300, help="calls per stitch for the idle timing")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: the bundle's)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "governor.png")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    print(f"bench_governor: {args.bundle}; {load()} at start ({os.cpu_count()} cores)")
    bundle = Bundle.open(args.bundle, threads=args.threads)
    shape = [1] + [int(d) for d in bundle.input_spec["shape"][1:]]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(32)]
    probe = Governor(bundle, deadline_ms=1e9, background=False, power_mode=None)
    front = [{"id": sid, "accuracy": bundle.stitch(sid).accuracy,
              "switch_in_ratio": probe.stats()["per_stitch"][sid]["switch_in_ratio"]} for sid in probe.front]
    probe.close()

    # 1. idle timing of each front stitch: the same paced stream loop, competitor off
    idle_period = (args.period_ms or args.deadline_ms or
                   2 * max(bundle.stitch(lv["id"]).latency_ms for lv in front)) / 1e3
    for lv in front:
        g = Governor(bundle, deadline_ms=1e9, stitches=[lv["id"]], background=False, power_mode=None)
        calls = [c["latency_ms"] for c in stream(g, inputs, None, idle_period, None, max_calls=args.idle_calls)]
        lv["idle_p95_ms"] = float(np.percentile(calls, 100 * args.quantile))
        lv["idle_median_ms"] = float(np.median(calls))
        g.close()
    print(f"idle timing ({args.idle_calls} calls per stitch, one every {idle_period * 1e3:.3f} ms; {load()}):")
    for lv in front:
        print(f"  stitch {lv['id']:>3}: median {lv['idle_median_ms']:.3f} ms, p{100 * args.quantile:g} "
              f"{lv['idle_p95_ms']:.3f} ms, validated top-1 {lv['accuracy']}, switch-in x{lv['switch_in_ratio']:.2f}")
    fastest = min(front, key=lambda lv: lv["idle_p95_ms"])
    slowest = max(front, key=lambda lv: lv["idle_p95_ms"])
    deadline = args.deadline_ms or (fastest["idle_p95_ms"] + slowest["idle_p95_ms"]) / 2
    fits = [lv for lv in front if lv["idle_p95_ms"] <= deadline and lv["accuracy"] is not None]
    best = max(fits, key=lambda lv: lv["accuracy"]) if fits else fastest
    fastest_id = front[0]["id"]  # the front's fastest by the manifest (what a user would pick)
    period = (args.period_ms or deadline) / 1e3
    print(f"deadline {deadline:.3f} ms (between the fastest idle p95 {fastest['idle_p95_ms']:.3f} and the "
          f"slowest {slowest['idle_p95_ms']:.3f}); static best = stitch {best['id']}, static fastest = "
          f"stitch {fastest_id}; input every {period * 1e3:.3f} ms; competitor: {args.hogs} CPU-bound "
          f"process(es), {args.off:g} s off / {args.on:g} s on")

    # 2. the three policies on the same pattern, in --rounds rotated rounds (the machine's other
    # load drifts; each policy gets a share of every part of the run)
    competitor = Competitor(args.hogs, args.on, args.off)
    policies = (("governor", None), ("static best", [best["id"]]), ("static fastest", [fastest_id]))
    accuracy = {lv["id"]: lv["accuracy"] for lv in front}
    calls_of: dict = {name: [] for name, _ in policies}
    govs_of: dict = {name: [] for name, _ in policies}
    trace = None
    for r in range(args.rounds):
        for name, ids in policies[r % 3:] + policies[:r % 3]:
            print(f"round {r + 1}/{args.rounds}, {name}: {load()} before")
            g = Governor(bundle, deadline_ms=deadline, quantile=args.quantile, stitches=ids, power_mode=None)
            calls = stream(g, inputs, args.seconds / args.rounds, period, competitor)
            g.close()
            calls_of[name] += calls
            govs_of[name].append(g)
            if name == "governor" and trace is None:
                trace = calls
    results = []
    for name, _ in policies:
        res = summarize(name, deadline, accuracy, calls_of[name], govs_of[name])
        results.append(res)
        print(f"{name}: {res['calls']} calls, miss rate {100 * res['miss_rate']:.2f}% (competitor on "
              f"{100 * (res['miss_rate_competitor_on'] or 0):.2f}%, off {100 * (res['miss_rate_competitor_off'] or 0):.2f}%), "
              f"mean validated top-1 {res['mean_accuracy']:.4f}, {res['switches']} switches; per stitch "
              f"{res['calls_per_stitch']}")

    gov, sbest, sfast = results
    gap = (sbest["mean_accuracy"] or 0) - (sfast["mean_accuracy"] or 0)
    kept = (gov["mean_accuracy"] - sfast["mean_accuracy"]) / gap if gap > 0 else None
    print("\n| policy | miss rate | competitor on | off | mean validated top-1 | switches |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['policy']} | {100 * r['miss_rate']:.2f}% | {100 * (r['miss_rate_competitor_on'] or 0):.2f}% | "
              f"{100 * (r['miss_rate_competitor_off'] or 0):.2f}% | {r['mean_accuracy']:.4f} | {r['switches']} |")
    ok_miss = gov["miss_rate"] <= 0.05
    ok_acc = kept is not None and kept >= 0.9
    print(f"\ngoal: governor miss rate {100 * gov['miss_rate']:.2f}% (<= 5%: {'met' if ok_miss else 'NOT MET'}); "
          f"accuracy gap kept {('-' if kept is None else f'{100 * kept:.1f}%')} of "
          f"{100 * gap:.2f} points (>= 90%: {'met' if ok_acc else 'NOT MET'}); {load()} at the end")
    if args.plot and trace:
        plot(args.plot, trace, deadline, front, competitor, args.seconds / args.rounds, best["id"],
             f"governor on {args.bundle.name}: deadline {deadline:.2f} ms, {args.hogs} CPU hog(s) "
             f"{args.off:g} s off / {args.on:g} s on; miss rate {100 * gov['miss_rate']:.1f}%, "
             f"gap kept {('-' if kept is None else f'{100 * kept:.0f}%')}")
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"deadline_ms": deadline, "front": front, "static_best": best["id"],
                                         "static_fastest": fastest_id, "results": results,
                                         "gap_kept": kept, "argv": sys.argv[1:]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from esta_export.runtime import BundleError

    try:
        sys.exit(main())
    except BundleError as err:
        print(f"bench_governor: error: {err}", file=sys.stderr)
        sys.exit(2)
