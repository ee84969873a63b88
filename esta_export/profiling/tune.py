"""``esta-export profile --tune``: measure the session settings that matter on this device, pick.

No fixed default that the device's own measurements contradict: on a few representative stitches
(the fastest, the median and the slowest by FLOPs) each candidate configuration is loaded as the
bundle runtime would load it (those stitches together) and timed with the one protocol
(runtime/timing.py). Candidates:
- ONNX Runtime: intra-op threads 1..cores, thread spinning off/on (from 2 threads: 1 thread has
  no pool to spin), shared vs private weights
  (sharing needs prepacking off, which costs time; private weights cost memory);
- OpenVINO: threads 1..cores, the performance hint (LATENCY: one stream; THROUGHPUT: the
  plugin's stream count) and CPU thread pinning on/off.
Candidates that draw a different speed per load (``LOAD_DRAW_GOAL``) are out first; then the
choice is the fastest candidate (geometric mean of the stitches' medians) whose dispersion
(the protocol's metric, worst stitch, median over rounds) meets the goal; if none does, the
fastest of those within ``RELAX`` times the steadiest candidate's dispersion, said so.
Every candidate is measured once per round over ``TUNE_ROUNDS`` rounds, in a new order each
round with its sessions loaded afresh, and judged by the mean over the rounds (what one load of
the application can expect: some configurations draw a different speed per load). Candidates
within ``TIE_REL`` of the fastest (the mean of their per-round ratios to it: drift cancels
within a round) are ties, and a tie goes to the plainer configuration: fewer threads (a session
using every core of a shared machine stalls whenever one core is taken, and leaves nothing to
the application), spinning off, weights shared, the LATENCY hint, then the lower dispersion.
Without the rule the choice flipped between runs minutes apart on the same machine, and the
2-thread session it sometimes kept profiled far less stably than 1 thread.
Candidates and choice go to ``<store>.tune.json``; ``profile`` then times every stitch with the
choice, every record says ``session.source = "tuned"``, and the bundle manifest's ``session``
carries it, so the app runs as measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ProfileError
from ..fsutil import atomic_write_json
from ..runtime.session import SessionSettings
from .harness import TimingProtocol, profile_runners

SCHEMA = "esta-export/session-tune"
SCHEMA_VERSION = "1.0"
# Short per-candidate protocol: the choice needs medians good to a few percent, not the final
# figures (those come from the full profile with the chosen settings).
TUNE_PROTOCOL = dict(min_runs=10, min_seconds=0.15, warmup_s=0.1, warmup_min=5, max_remeasure=0)
TUNE_ROUNDS = 3
# When no candidate meets the dispersion goal, those within this factor of the steadiest compete.
RELAX = 1.5
# A configuration whose stitches draw a different speed per load cannot have its latency promised:
# the profile is one load, the application another. Load draw = median over the tuning stitches
# of (slowest round's median / fastest round's - 1). Candidates above max(LOAD_DRAW_GOAL,
# RELAX x the steadiest's) leave the pool. Measured on a 2-vCPU AMD EPYC VM: 2-thread OpenVINO
# LATENCY 0.65 (stitch 0 drew 1.09-1.97 ms over six compiles), 1-thread LATENCY 0.07; the bundle
# app then read 0.77x the manifest's latency.
LOAD_DRAW_GOAL = 0.2
# A candidate within this of the fastest (mean of the per-round ratios) is a tie: closer than
# what short measurements on a shared machine can tell apart.
TIE_REL = 0.05


def tune_path(store_path: str | Path) -> Path:
    from ..stages import tune_path as path   # stages owns the layout
    return path(store_path)


def cores() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def representative(rows: Sequence[dict[str, Any]], k: int = 3) -> list[Any]:
    """Fastest, median and slowest by FLOPs (k evenly spread when k != 3)."""
    ordered = sorted(rows, key=lambda r: (float(r.get("flops") or 0), str(r["id"])))
    if len(ordered) <= k:
        return [r["id"] for r in ordered]
    idx = sorted({round(i * (len(ordered) - 1) / (k - 1)) for i in range(k)})
    return [ordered[i]["id"] for i in idx]


def candidates(backend: str, n_cores: int) -> list[dict[str, Any]]:
    threads = list(range(1, n_cores + 1))
    if backend == "onnxruntime":
        # Spinning is a setting of the intra-op thread pool, and with one thread ONNX Runtime
        # creates none (onnxruntime/core/util/thread_utils.cc returns before building it): at 1
        # thread spinning on and off are the same session, and timing both only let noise pick
        # between twins (measured: the choice flipped between them in two runs minutes apart).
        return [{"threads": t, "intra_op_spinning": spin, "share_weights": share}
                for share in (True, False) for spin in (False, True) for t in threads
                if t > 1 or not spin]
    if backend == "openvino":
        return [{"threads": t, "performance_hint": hint, "cpu_pinning": pin}
                for pin in (True, False) for hint in ("LATENCY", "THROUGHPUT") for t in threads]
    raise ProfileError(f"--tune knows the settings of ONNX Runtime and OpenVINO, not {backend}",
                       hint="profile without --tune")


def _runners(backend, target, paths: dict[Any, Path], cand: dict[str, Any]):
    if backend.name == "onnxruntime":
        s = SessionSettings(threads=cand["threads"], intra_op_spinning=cand["intra_op_spinning"],
                            share_weights=cand["share_weights"], source="tuned")
        return {i: backend.load(p, target, s) for i, p in paths.items()}
    t, _ = apply_choice(target, cand)
    return {i: backend.load(p, t) for i, p in paths.items()}


def tune_session(compiled_dir: str | Path, target: Any, store_path: str | Path, *,
                 stitches: int = 3, protocol: TimingProtocol | None = None,
                 progress=None) -> dict[str, Any]:
    """Measure the candidates on representative stitches, pick, write ``<store>.tune.json``."""
    from ..backends import get_backend
    from ..stages import input_shape_for, read_compiled, stitch_table
    from .environment import env_hash, fingerprint

    compiled_dir = Path(compiled_dir)
    comp, export, _ = read_compiled(compiled_dir)
    rows = [r for r in stitch_table(comp, export) if r.get("path")]
    if not rows:
        raise ProfileError(f"no compiled artifacts in {compiled_dir} to tune on",
                           hint="run 'esta-export compile' first")
    backend = get_backend(comp.get("backend") or target.backend)
    ids = representative(rows, stitches)
    by_id = {r["id"]: r for r in rows}
    paths = {i: compiled_dir / by_id[i]["path"] for i in ids}
    shape = input_shape_for(export, comp, 1)
    base = protocol or TimingProtocol()
    # Never longer than the profile itself was asked to be (--runs / --seconds).
    proto = dataclasses.replace(base, **{k: min(v, getattr(base, k)) for k, v in TUNE_PROTOCOL.items()})
    metric, goal = proto.cv_metric, proto.cv_threshold
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    cands = candidates(backend.name, cores())
    rounds: list[list[dict[str, Any]]] = [[] for _ in cands]
    say = progress or (lambda phase, frac, detail: None)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    # Every candidate once per round, in a new order each round: a shared machine drifts by tens
    # of percent within a minute, so one measurement per candidate compares the moments they were
    # measured in; per round the candidates are seconds apart, and the choice rests on the
    # means over rounds and on the per-round ratios to the fastest.
    for rnd in range(TUNE_ROUNDS):
        for n, k in enumerate(rng.permutation(len(cands))):
            cand = cands[k]
            say("tune", (rnd * len(cands) + n) / (TUNE_ROUNDS * len(cands)), json.dumps(cand))
            runners = _runners(backend, target, paths, cand)
            try:
                stats = profile_runners(runners, inputs=x, protocol=proto)
            finally:
                for r in runners.values():
                    r.close()
            rounds[k].append({"median_ms": {str(i): s.median for i, s in stats.items()},
                              "dispersion": float(max(s.dispersion(metric) for s in stats.values()))})
    done = [_summarize(cand, rs) for cand, rs in zip(cands, rounds)]
    best, ties, meets = choose(done, goal)
    kept = steady_over_loads(done)   # what choose() compared, for the record
    choice = {k: best[k] for k in cands[0]}
    env = fingerprint()
    out = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "target": target.name,
           "backend": backend.name, "stitches": ids, "env_hash": env_hash(env),
           "cpu": env.get("processor"), "cores": cores(), "metric": metric, "goal": goal,
           "protocol": proto.to_dict(), "candidates": done, "choice": choice,
           "choice_meets_goal": bool(meets),
           "rounds": TUNE_ROUNDS,
           "rule": ("candidates whose load draw (median over stitches of slowest/fastest round "
                    f"- 1) exceeds max({LOAD_DRAW_GOAL:g}, {RELAX:g}x the steadiest's) are out; then "
                    "the fastest mean-over-rounds geometric mean (sessions reloaded every round) among "
                    "candidates whose median dispersion meets the goal (none: within "
                    f"{RELAX:g}x the steadiest's); a candidate within "
                    f"{TIE_REL:.0%} of it (mean of the per-round ratios) ties, and ties go to fewer "
                    "threads, spinning off, shared weights, LATENCY, then lower dispersion"),
           "ties": [{k: t[k] for k in cands[0]} for t in ties],
           "goal_used": reachable_goal(kept, goal),
           "load_draw_limit": load_draw_limit(done),
           "load_draw_out": [{k: r[k] for k in cands[0]} for r in done
                             if not any(r is k for k in kept)],
           "note": None if meets else (f"no candidate reached {metric} <= {goal:.0%} on this "
                                       "machine; the fastest of those within "
                                       f"{RELAX:g}x the steadiest's {metric} "
                                       f"({reachable_goal(kept, goal):.1%}) was chosen (quiet the "
                                       "machine and re-tune)"),
           "seconds": time.perf_counter() - t0}
    atomic_write_json(tune_path(store_path), out)
    say("tune", 1.0, json.dumps(choice))
    return out


def _geomean(values) -> float:
    return float(math.exp(np.mean([math.log(max(float(v), 1e-9)) for v in values])))


def _plainness(r: dict[str, Any]) -> tuple:
    """Sort key among ties: the plainer configuration first (see the module doc)."""
    return (int(r.get("threads") or 0), bool(r.get("intra_op_spinning", False)),
            not r.get("share_weights", True), r.get("performance_hint", "LATENCY") != "LATENCY",
            float(r["dispersion"]))


def _summarize(cand: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One candidate's figures over the rounds: per-stitch medians, the geometric mean of each
    round and their mean, the median of the rounds' worst-stitch dispersions."""
    gms = [_geomean(r["median_ms"].values()) for r in rounds]
    ids = list(rounds[0]["median_ms"])
    return {**cand,
            "median_ms": {i: float(np.median([r["median_ms"][i] for r in rounds])) for i in ids},
            # The mean over rounds, each with freshly loaded sessions: what an application can
            # expect from one load. On 2 vCPUs a 2-thread session drew ~1.3 or ~2.6 ms per
            # compile of the same model (either pinning), where 1 thread drew 1.6-2.0 ms; a
            # median of three rounds would keep the lucky draw.
            "geomean_ms": float(np.mean(gms)), "rounds_geomean_ms": gms,
            "load_spread": float(max(gms) / min(gms)) if min(gms) > 0 else None,
            # Per stitch, the slowest round's median over the fastest's: a configuration that
            # draws a speed per load shows it on one stitch long before the geometric mean does
            # (three rounds also hold the drift: hence the median over stitches and the slack).
            "rounds_median_ms": [dict(r["median_ms"]) for r in rounds],
            # load_draw() reads this: the choice's first filter
            "stitch_load_spread": {i: float(max(r["median_ms"][i] for r in rounds)
                                            / min(r["median_ms"][i] for r in rounds))
                                   for i in ids if min(r["median_ms"][i] for r in rounds) > 0},
            "dispersion": float(np.median([r["dispersion"] for r in rounds])),
            "rounds_dispersion": [r["dispersion"] for r in rounds],
            "loadavg": list(os.getloadavg())}


def _ratio_to(r: dict[str, Any], ref: dict[str, Any]) -> float:
    """Mean over rounds of r's geometric mean / ref's in the same round (drift cancels)."""
    a, b = r.get("rounds_geomean_ms") or [r["geomean_ms"]], ref.get("rounds_geomean_ms") or [ref["geomean_ms"]]
    if len(a) != len(b):
        return r["geomean_ms"] / ref["geomean_ms"]
    return float(np.mean([x / y for x, y in zip(a, b)]))


def reachable_goal(done: Sequence[dict[str, Any]], goal: float) -> float:
    """The dispersion goal the choice is held to: ``goal``, or, when no candidate meets it, the
    steadiest candidate's dispersion times ``RELAX``."""
    floor = min(float(r["dispersion"]) for r in done)
    return goal if floor <= goal else floor * RELAX


def load_draw(r: dict[str, Any]) -> float:
    """Median over the stitches of (slowest round / fastest round - 1); 0 when not recorded."""
    spreads = list((r.get("stitch_load_spread") or {}).values())
    return float(np.median(spreads)) - 1.0 if spreads else 0.0


def load_draw_limit(done: Sequence[dict[str, Any]]) -> float:
    return max(LOAD_DRAW_GOAL, RELAX * min(load_draw(r) for r in done))


def steady_over_loads(done: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The choice's first filter: out go configurations that draw a speed per load."""
    limit = load_draw_limit(done)
    return [r for r in done if load_draw(r) <= limit]


def choose(done: Sequence[dict[str, Any]], goal: float
           ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(the choice, the candidates tied with the fastest, those meeting the goal)."""
    if not done:
        raise ProfileError("no tuning candidate could be measured", hint="profile without --tune")
    done = steady_over_loads(done)
    meets = [r for r in done if r["dispersion"] <= goal]
    # None meets the goal (a shared, drifting machine): the goal becomes what this machine can
    # reach, the steadiest candidate's dispersion with RELAX of room, and the fastest of those
    # wins. A fast configuration three times as dispersed would make every profile of it noisy,
    # irreproducible and long (re-measures), for a gain smaller than its own noise.
    pool = meets or [r for r in done if r["dispersion"] <= reachable_goal(done, goal)]
    fastest = min(pool, key=lambda r: r["geomean_ms"])
    ties = [r for r in pool if r is fastest or _ratio_to(r, fastest) <= 1 + TIE_REL]
    return min(ties, key=_plainness), ties, meets


def tuned_choice(store_path: str | Path, target: Any, env_hash_now: str) -> dict[str, Any] | None:
    """The ``--tune`` choice recorded next to ``store_path`` for this target on this machine."""
    p = tune_path(store_path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if (not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("target") != target.name
            or data.get("env_hash") != env_hash_now or not isinstance(data.get("choice"), dict)):
        return None
    return data


def apply_choice(target: Any, choice: dict[str, Any]) -> tuple[Any, SessionSettings | None]:
    """(target with the choice in [execution], ORT session settings or None for OpenVINO)."""
    if "performance_hint" in choice:
        pin = choice.get("cpu_pinning")
        ex = dataclasses.replace(target.execution, threads=int(choice["threads"]),
                                 performance_hint=str(choice["performance_hint"]),
                                 cpu_pinning=None if pin is None else bool(pin))
        return dataclasses.replace(target, execution=ex), None
    s = SessionSettings(threads=int(choice["threads"]), intra_op_spinning=bool(choice["intra_op_spinning"]),
                        share_weights=bool(choice["share_weights"]), source="tuned")
    ex = dataclasses.replace(target.execution, threads=s.threads, share_weights=s.share_weights,
                             intra_op_spinning=s.intra_op_spinning)
    return dataclasses.replace(target, execution=ex), s
