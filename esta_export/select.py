"""Pareto selection by MEASURED latency, beside what FLOPs would have chosen.

The front is over accuracy (max) and measured median latency (min), optionally peak memory (min).
Next to it the FLOPs front (accuracy vs FLOPs) shows which stitches a FLOPs-based choice would
ship although the device shows them dominated, the Kendall rank correlation between FLOPs and
latency, and the "selection value": for each latency budget, the accuracy lost by choosing by
FLOPs (with the best linear FLOPs->latency calibration) instead of by measured latency.
Every number states where it came from: latency measured or predicted, accuracy from validation
data of the compiled artifact or from the supernet's records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from .errors import InputError, SelectionError
from .pareto import (Objective, figure_intervals, kendall_tau, pareto_front,  # noqa: F401
                     pareto_front_intervals, selection_value,
                     spread_along_front)

SCHEMA = "esta-export/selection"
SCHEMA_VERSION = "1.0"
LATENCY_METRIC = "median"


def default_select_path(compiled_dir: str | Path, target_name: str) -> Path:
    compiled_dir = Path(compiled_dir)
    if compiled_dir.parent.name == "compiled":
        return compiled_dir.parent.parent / "select" / f"{target_name}.json"
    return compiled_dir / "select" / f"{target_name}.json"


def _stats_row(row: dict[str, Any], rec: dict[str, Any] | None, pred: float | None
               ) -> dict[str, Any]:
    out = {"id": row["id"], "route": row.get("route"), "flops": row.get("flops"),
           "params": row.get("params"), "artifact_sha256": row.get("sha256"),
           "segments": row.get("segments")}
    if rec is not None:
        ci = rec["latency_ms"].get(f"{LATENCY_METRIC}_ci")
        out.update(latency=rec["latency_ms"][LATENCY_METRIC], latency_ms=rec["latency_ms"],
                   latency_ci=list(ci) if isinstance(ci, (list, tuple)) else None,
                   switch_in_ms=rec.get("switch_in_ms"),
                   latency_source="measured", unstable=bool(rec.get("unstable")),
                   peak_rss_mb=rec.get("peak_rss_mb"), env_hash=rec.get("env_hash"),
                   energy=rec.get("energy"))
    elif pred is not None:
        out.update(latency=pred, latency_ms=None, latency_source="predicted", unstable=False,
                   peak_rss_mb=None)
    else:
        out.update(latency=None, latency_ms=None, latency_source=None, unstable=False,
                   peak_rss_mb=None)
    return out


def select_compiled(compiled_dir: str | Path, target: Any, store_path: str | Path | None = None,
                    *, latency_budget_ms: float | None = None, max_stitches: int | None = None,
                    min_accuracy: float | None = None, memory: bool = False,
                    val_data: str | Path | None = None, out_path: str | Path | None = None,
                    batch: int | None = None) -> dict[str, Any]:
    """Build the selection for ``compiled_dir`` and write it (atomically) to ``out_path``."""
    from .fsutil import atomic_write_json
    from .predict import LatencyModel, leave_one_out
    from .profiling.compiled import default_store_path, read_compiled, stitch_table
    from .profiling.store import ProfileStore
    from .targets import load_target

    target = load_target(target) if isinstance(target, (str, Path)) else target
    if max_stitches is not None and max_stitches < 1:
        raise InputError("--max-stitches must be at least 1", hint="or leave it out")
    compiled_dir = Path(compiled_dir)
    comp, export, _ = read_compiled(compiled_dir)
    rows = stitch_table(comp, export)
    warnings: list[str] = []
    if not comp.get("verified_on_hardware", getattr(target, "verified_on_hardware", False)):
        warnings.append(f"target {target.name} is not verified on hardware: its artifacts were "
                        "built from documentation, treat the numbers with care")
    for f in comp.get("failed", []) + (export or {}).get("failed", []):
        warnings.append(f"stitch {f.get('id')} dropped: {f.get('reason', 'failed')}")

    store = ProfileStore(store_path or default_store_path(compiled_dir, target.name))
    batch = batch or (getattr(getattr(target, "shapes", None), "batch_sizes", (1,)) or (1,))[0]
    latest: dict[str, dict[str, Any]] = {}
    for rec in store.records():
        if rec.get("target") == target.name and rec.get("batch", 1) == batch and rec.get("measured", True) \
                and isinstance(rec.get("artifact_sha256"), str):   # a damaged record is skipped, not a TypeError
            latest[rec["artifact_sha256"]] = rec
    warnings.extend(store.warnings)
    measured = {r["id"]: latest[r["sha256"]] for r in rows if r.get("sha256") in latest}
    if not measured:
        raise SelectionError(f"no profile records for target {target.name} (batch {batch}) in "
                             f"{store.path}", hint=f"run 'esta-export profile {compiled_dir} "
                             f"--target {target.name}' first")
    envs = {rec.get("env_hash") for rec in measured.values()}
    if len(envs) > 1:
        warnings.append(f"latencies come from {len(envs)} different environments; compare with "
                        "care or re-profile --fresh on one machine")

    rest = [r for r in rows if r["id"] not in measured]
    predicted: dict[Hashable, float] = {}
    predictor = None
    if rest:
        train = [r for r in rows if r["id"] in measured]
        y = [measured[r["id"]]["latency_ms"][LATENCY_METRIC] for r in train]
        if len(train) >= 2:
            model = LatencyModel.fit(train, y)
            predicted = dict(zip([r["id"] for r in rest], map(float, model.predict(rest))))
            predictor = {"model": model.to_dict(), "leave_one_out": leave_one_out(train, y).to_dict()}
            for r in rest:
                if not model.covers(r):
                    warnings.append(f"stitch {r['id']} latency is extrapolated (uses a component "
                                    "no profiled stitch had)")
        else:
            warnings.append(f"{len(rest)} stitches have no latency (profile more of them)")

    table = [_stats_row(r, measured.get(r["id"]), predicted.get(r["id"])) for r in rows]

    # Accuracy: the compiled artifact on validation data, else the supernet's records.
    if val_data is not None:
        from .evaluate import evaluate_compiled
        accs = evaluate_compiled(compiled_dir, target, val_data)
        for t in table:
            a = accs.get(t["id"])
            t["accuracy"] = None if a is None else a["accuracy"]
            t["accuracy_source"] = None if a is None else a["source"]
        accuracy_source = "val-data: top-1 of the compiled artifacts"
    else:
        src = {r["id"]: r for r in rows}
        for t in table:
            t["accuracy"] = src[t["id"]].get("accuracy")
            t["accuracy_source"] = (src[t["id"]].get("accuracy_source") or "supernet records") \
                if t["accuracy"] is not None else None
        accuracy_source = "supernet records (export.json)"
    no_acc = [t["id"] for t in table if t["accuracy"] is None]
    if no_acc and len(no_acc) < len(table):
        warnings.append(f"stitches {', '.join(map(str, no_acc[:10]))} have no accuracy and are "
                        "left out of the front (pass --val-data)")
    for t in table:
        if t["latency_source"] == "measured" and t["unstable"]:
            metric = (measured[t["id"]].get("protocol") or {}).get("cv_metric", "cv")
            warnings.append(f"stitch {t['id']} latency is unstable ({metric} "
                            f"{t['latency_ms'].get(metric, t['latency_ms']['cv']):.1%}); "
                            "re-profile --fresh on a quiet machine")
    if memory and any(t["latency"] is not None and t["peak_rss_mb"] is None for t in table
                      if t["accuracy"] is not None):
        warnings.append("peak memory is missing for some stitches; they are left out of the "
                        "memory-aware front")

    cand = [t for t in table if t["latency"] is not None and t["accuracy"] is not None
            and (not memory or t["peak_rss_mb"] is not None)]
    objectives: list[Objective] = [("accuracy", "max")]
    if memory:
        objectives.append(("peak_rss_mb", "min"))
    objectives.append(("latency", "min"))
    if cand:
        # Dominance only beyond the medians' intervals; what they cannot tell apart stays on
        # the front as a tie (pareto.py).
        front, dominated_by, ties = pareto_front_intervals(cand, objectives)
        mode = "pareto"
    else:
        warnings.append("no stitch has an accuracy: selection falls back to latency order only "
                        "(pass --val-data DATA.npz to measure accuracy)")
        front, dominated_by, ties, mode = [], {}, {}, "latency-only"
        cand = [t for t in table if t["latency"] is not None]
    for t in table:
        t["on_front"] = t["id"] in front
        t["dominated_by"] = dominated_by.get(t["id"])
        t["tie_with"] = ties.get(t["id"], [])
        if t["on_front"] and t["latency_source"] == "predicted":
            warnings.append(f"stitch {t['id']} is on the front with a PREDICTED latency; run "
                            "'esta-export profile' to measure it before shipping")

    pool = [t for t in cand if (mode == "latency-only" or t["on_front"])]
    if latency_budget_ms is not None:
        pool = [t for t in pool if t["latency"] <= latency_budget_ms]
    if min_accuracy is not None and mode == "pareto":
        pool = [t for t in pool if t["accuracy"] >= min_accuracy]
    if not pool:
        fastest = min((t["latency"] for t in cand), default=None)
        raise SelectionError(
            "no stitch meets the constraints"
            + (f" (latency budget {latency_budget_ms} ms; fastest stitch {fastest:.3f} ms)"
               if latency_budget_ms is not None and fastest is not None else "")
            + (f" (min accuracy {min_accuracy})" if min_accuracy is not None else ""),
            hint="relax --latency-budget-ms / --min-accuracy")
    pool.sort(key=lambda t: t["latency"])
    selected = spread_along_front(pool, max_stitches) if max_stitches else [t["id"] for t in pool]

    # FLOPs view.
    flops_cand = [t for t in table if t["accuracy"] is not None and t["flops"] is not None]
    flops_front, _ = pareto_front(flops_cand, [("accuracy", "max"), ("flops", "min")]) \
        if flops_cand else ([], {})
    flops_dominated = [{"id": i, "dominated_by": dominated_by.get(i)} for i in flops_front
                       if i not in front and mode == "pareto"
                       and next(t for t in table if t["id"] == i)["latency"] is not None]
    meas = [t for t in table if t["latency_source"] == "measured" and t["flops"] is not None]
    tau = kendall_tau([t["flops"] for t in meas], [t["latency"] for t in meas])

    result = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "target": target.name,
        "batch": batch, "latency_metric": LATENCY_METRIC, "mode": mode,
        "objectives": [f"{d} {k}" for k, d in objectives],
        "accuracy_source": accuracy_source, "store": str(store.path),
        "constraints": {"latency_budget_ms": latency_budget_ms, "max_stitches": max_stitches,
                        "min_accuracy": min_accuracy, "memory": memory},
        "front": front, "selected": selected,
        "stitches": [{k: v for k, v in t.items() if k != "segments"} for t in table],
        "flops_front": flops_front, "flops_dominated_on_device": flops_dominated,
        "kendall_tau": tau, "kendall_tau_n": len(meas),
        "front_ties": {str(k): v for k, v in ties.items()},
        "intervals": figure_intervals(table),
        "selection_value": selection_value(table),
        "predictor": predictor,
        "env": next(iter(measured.values())).get("env"),
        "verified_on_hardware": comp.get("verified_on_hardware"),
        # Where the measured latencies really ran (each record's fingerprint vs the target's
        # device class), not what the target file claims.
        "hardware": _where_measured(measured.values()),
        "warnings": warnings,
    }
    out = Path(out_path) if out_path else default_select_path(compiled_dir, target.name)
    atomic_write_json(out, _jsonable(result))
    result["path"] = str(out)
    return result


def _where_measured(records) -> dict[str, Any]:
    hw = [r.get("hardware") for r in records if isinstance(r.get("hardware"), dict)]
    if not hw:
        return {"known": False, "matches": None, "ran_on": [],
                "reason": "the records predate hardware checks; re-profile --fresh"}
    ran_on = sorted({h.get("ran_on") for h in hw if h.get("ran_on")})
    bad = sorted({h.get("reason") for h in hw if not h.get("matches")})
    return {"known": True, "matches": not bad, "ran_on": ran_on,
            "reason": "; ".join(bad) if bad else "matches the target's device class"}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
