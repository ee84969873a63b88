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
from typing import Any

from . import stages
from .errors import InputError, SelectionError
from .pareto import (Objective, figure_intervals, kendall_tau, pareto_front,  # noqa: F401
                     pareto_front_intervals, selection_value,
                     spread_along_front)

SCHEMA = stages.SELECTION_SCHEMA
SCHEMA_VERSION = "1.0"
LATENCY_METRIC = "median"


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
                    batch: int | None = None, accuracy_store: str | Path | None = None,
                    exclude: dict[int, str] | None = None
                    ) -> dict[str, Any]:
    """Build the selection for ``compiled_dir`` and write it (atomically) to ``out_path``.

    A reader of the earlier stages' files: measured latencies from the profile store, predicted
    ones from the predictor profile fitted (``stages.read_predictions``), accuracy from the
    accuracy records (``--val-data`` is evaluated once per artifact and data file, then reused)
    or the supernet's records. ``exclude``: stitch id -> reason, left out (e.g. failed
    validation on the device). Steps: inputs -> latencies -> accuracies -> front -> document.
    """
    from .targets import load_target

    target = load_target(target) if isinstance(target, (str, Path)) else target
    if max_stitches is not None and max_stitches < 1:
        raise InputError("--max-stitches must be at least 1", hint="or leave it out")
    compiled_dir = Path(compiled_dir)
    comp, export, rows, warnings = _inputs(compiled_dir, target)
    for sid, reason in sorted((exclude or {}).items()):
        warnings.append(f"stitch {sid} dropped: {reason}")
    rows = [r for r in rows if r["id"] not in (exclude or {})]
    batch = batch or (getattr(getattr(target, "shapes", None), "batch_sizes", (1,)) or (1,))[0]
    store = Path(store_path) if store_path else stages.default_store_path(compiled_dir, target.name)
    table, measured, predictor = _latencies(compiled_dir, target, rows, store, batch, warnings)
    accuracy_source = _accuracies(table, rows, compiled_dir, target, val_data, accuracy_store,
                                  warnings)
    _stability_warnings(table, measured, memory, warnings)
    picked = _front(table, memory, latency_budget_ms, min_accuracy, max_stitches, warnings)
    result = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "target": target.name,
        "batch": batch, "latency_metric": LATENCY_METRIC, "mode": picked["mode"],
        "objectives": [f"{d} {k}" for k, d in picked["objectives"]],
        "accuracy_source": accuracy_source, "store": str(store),
        "constraints": {"latency_budget_ms": latency_budget_ms, "max_stitches": max_stitches,
                        "min_accuracy": min_accuracy, "memory": memory},
        "front": picked["front"], "selected": picked["selected"],
        "stitches": [{k: v for k, v in t.items() if k != "segments"} for t in table],
        **_flops_view(table, picked),
        "front_ties": {str(k): v for k, v in picked["ties"].items()},
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
    out = Path(out_path) if out_path else stages.default_select_path(compiled_dir, target.name)
    stages.write_selection(out, result)
    result["path"] = str(out)
    return result


def _inputs(compiled_dir: Path, target: Any
            ) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]], list[str]]:
    """compile.json + export.json (checked) as stitch rows, with the warnings they carry."""
    comp, export, _ = stages.read_compiled(compiled_dir)
    rows = stages.stitch_table(comp, export)
    warnings: list[str] = []
    if not comp.get("verified_on_hardware", getattr(target, "verified_on_hardware", False)):
        warnings.append(f"target {target.name} is not verified on hardware: its artifacts were "
                        "built from documentation, treat the numbers with care")
    for f in comp.get("failed", []) + (export or {}).get("failed", []):
        warnings.append(f"stitch {f.get('id')} dropped: {f.get('reason', 'failed')}")
    return comp, export, rows, warnings


def _latencies(compiled_dir: Path, target: Any, rows: list[dict[str, Any]], store: Path,
               batch: int, warnings: list[str]
               ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], dict[str, Any] | None]:
    """Measured latency from the store, else the prediction profile made (see _predictions)."""
    recs = stages.read_profile_records(store, target.name, batch)
    warnings.extend(recs.warnings)
    measured = {r["id"]: recs.latest[r["sha256"]] for r in rows if r.get("sha256") in recs.latest}
    if not measured:
        raise SelectionError(f"no profile records for target {target.name} (batch {batch}) in "
                             f"{store}", hint=f"run 'esta-export profile {compiled_dir} "
                             f"--target {target.name}' first")
    envs = {rec.get("env_hash") for rec in measured.values()}
    if len(envs) > 1:
        warnings.append(f"latencies come from {len(envs)} different environments; compare with "
                        "care or re-profile --fresh on one machine")
    rest = [r for r in rows if r["id"] not in measured]
    predicted, predictor = _predictions(rows, rest, measured, store, target.name, batch, warnings)
    table = [_stats_row(r, measured.get(r["id"]), predicted.get(r["id"])) for r in rows]
    return table, measured, predictor


def _predictions(rows: list[dict[str, Any]], rest: list[dict[str, Any]],
                 measured: dict[int, dict[str, Any]], store: Path, target: str, batch: int,
                 warnings: list[str]) -> tuple[dict[int, float], dict[str, Any] | None]:
    """The predictions profile persisted, when they were fitted on exactly the records read here;
    otherwise (records added or replaced since, or a store profile never wrote) the same model
    is fitted here on the measured stitches."""
    if not rest:
        return {}, None
    fitted_on = {rec["artifact_sha256"]: rec["latency_ms"][LATENCY_METRIC]
                 for rec in measured.values()}
    saved = stages.read_predictions(store, target, batch)
    if saved is not None and saved["fitted_on"] == fitted_on \
            and all(r["sha256"] in saved["predicted"] for r in rest):
        for r in rest:
            if r["sha256"] in saved["extrapolated"]:
                warnings.append(f"stitch {r['id']} latency is extrapolated (uses a component "
                                "no profiled stitch had)")
        return ({r["id"]: saved["predicted"][r["sha256"]] for r in rest},
                {**saved["predictor"], "source": "esta-export profile (persisted)"})
    from .predict import LatencyModel, leave_one_out

    train = [r for r in rows if r["id"] in measured]
    y = [measured[r["id"]]["latency_ms"][LATENCY_METRIC] for r in train]
    if len(train) < 2:
        warnings.append(f"{len(rest)} stitches have no latency (profile more of them)")
        return {}, None
    model = LatencyModel.fit(train, y)
    predicted = dict(zip([r["id"] for r in rest], map(float, model.predict(rest))))
    for r in rest:
        if not model.covers(r):
            warnings.append(f"stitch {r['id']} latency is extrapolated (uses a component "
                            "no profiled stitch had)")
    return predicted, {"model": model.to_dict(), "leave_one_out": leave_one_out(train, y).to_dict(),
                       "source": "fitted by select on the measured stitches"}


def _accuracies(table: list[dict[str, Any]], rows: list[dict[str, Any]], compiled_dir: Path,
                target: Any, val_data: str | Path | None, accuracy_store: str | Path | None,
                warnings: list[str]) -> str:
    """Accuracy of every row: the compiled artifact on validation data (recorded once per
    artifact and data file), else the supernet's records."""
    if val_data is not None:
        from .evaluate import recorded_accuracy
        accs = recorded_accuracy(compiled_dir, target, val_data, store_path=accuracy_store)
        for t in table:
            a = accs.get(t["id"])
            t["accuracy"] = None if a is None else a["accuracy"]
            t["accuracy_source"] = None if a is None else a["source"]
        source = "val-data: top-1 of the compiled artifacts"
    else:
        src = {r["id"]: r for r in rows}
        for t in table:
            t["accuracy"] = src[t["id"]].get("accuracy")
            t["accuracy_source"] = (src[t["id"]].get("accuracy_source") or "supernet records") \
                if t["accuracy"] is not None else None
        source = "supernet records (export.json)"
    no_acc = [t["id"] for t in table if t["accuracy"] is None]
    if no_acc and len(no_acc) < len(table):
        warnings.append(f"stitches {', '.join(map(str, no_acc[:10]))} have no accuracy and are "
                        "left out of the front (pass --val-data)")
    return source


def _stability_warnings(table: list[dict[str, Any]], measured: dict[int, dict[str, Any]],
                        memory: bool, warnings: list[str]) -> None:
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


def _front(table: list[dict[str, Any]], memory: bool, latency_budget_ms: float | None,
           min_accuracy: float | None, max_stitches: int | None, warnings: list[str]
           ) -> dict[str, Any]:
    """The Pareto front over the candidates and the stitches picked from it."""
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
    return {"front": front, "dominated_by": dominated_by, "mode": mode, "selected": selected,
            "objectives": objectives, "ties": ties}


def _flops_view(table: list[dict[str, Any]], picked: dict[str, Any]) -> dict[str, Any]:
    """What a FLOPs-based choice would ship, and how well FLOPs rank latency (Kendall tau)."""
    flops_cand = [t for t in table if t["accuracy"] is not None and t["flops"] is not None]
    flops_front, _ = pareto_front(flops_cand, [("accuracy", "max"), ("flops", "min")]) \
        if flops_cand else ([], {})
    by_id = {t["id"]: t for t in table}
    flops_dominated = [{"id": i, "dominated_by": picked["dominated_by"].get(i)} for i in flops_front
                       if i not in picked["front"] and picked["mode"] == "pareto"
                       and by_id[i]["latency"] is not None]
    meas = [t for t in table if t["latency_source"] == "measured" and t["flops"] is not None]
    tau = kendall_tau([t["flops"] for t in meas], [t["latency"] for t in meas])
    return {"flops_front": flops_front, "flops_dominated_on_device": flops_dominated,
            "kendall_tau": tau, "kendall_tau_n": len(meas)}


def _where_measured(records) -> dict[str, Any]:
    hw = [r.get("hardware") for r in records if isinstance(r.get("hardware"), dict)]
    if not hw:
        return {"known": False, "matches": None, "ran_on": [],
                "reason": "the records predate hardware checks; re-profile --fresh"}
    ran_on = sorted({h.get("ran_on") for h in hw if h.get("ran_on")})
    bad = sorted({h.get("reason") for h in hw if not h.get("matches")})
    return {"known": True, "matches": not bad, "ran_on": ran_on,
            "reason": "; ".join(bad) if bad else "matches the target's device class"}
