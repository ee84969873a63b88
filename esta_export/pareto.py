"""Pareto maths over stitch rows: the non-dominated front, an even spread along it, the rank
correlation between FLOPs and latency, and the "selection value" (accuracy lost per latency
budget by choosing by FLOPs instead of measured latency).

Pure functions of their inputs (no files, no policy): ``select`` decides what to ship with
them, ``profiling`` uses the front to decide which predicted stitches to time for real.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np

Objective = tuple[str, str]  # (key, "max" | "min")


def pareto_front(items: Sequence[dict[str, Any]], objectives: Sequence[Objective]
                 ) -> tuple[list[Hashable], dict[Hashable, Hashable]]:
    """Ids of the non-dominated items (sorted by the last objective) and, for each dominated
    item, the id of one front item that dominates it (the one closest in the last objective)."""
    sign = [1.0 if d == "max" else -1.0 for _, d in objectives]
    vals = {it["id"]: np.array([s * float(it[k]) for (k, _), s in zip(objectives, sign)])
            for it in items}

    def dominates(a: np.ndarray, b: np.ndarray) -> bool:
        return bool((a >= b).all() and (a > b).any())

    front = [i for i, v in vals.items() if not any(dominates(w, v) for j, w in vals.items()
                                                   if j != i)]
    key = objectives[-1][0]
    by_id = {it["id"]: it for it in items}
    front.sort(key=lambda i: float(by_id[i][key]))
    dominated_by = {}
    for i, v in vals.items():
        if i in front:
            continue
        doms = [j for j in front if dominates(vals[j], v)]
        if doms:
            dominated_by[i] = min(doms, key=lambda j: abs(float(by_id[j][key]) -
                                                         float(by_id[i][key])))
    return front, dominated_by


def spread_along_front(front: Sequence[dict[str, Any]], k: int, key: str = "latency") -> list:
    """``k`` ids spread evenly along the front by ``key`` (both ends always kept)."""
    pts = sorted(front, key=lambda p: p[key])
    if k >= len(pts):
        return [p["id"] for p in pts]
    if k <= 0:
        return []
    if k == 1:
        return [pts[-1]["id"]]  # the most accurate one within the constraints
    lo, hi = pts[0][key], pts[-1][key]
    chosen: list[int] = []
    for t in np.linspace(lo, hi, k):
        free = [i for i in range(len(pts)) if i not in chosen]
        chosen.append(min(free, key=lambda i: abs(pts[i][key] - t)))
    return [pts[i]["id"] for i in sorted(chosen)]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two sequences (None with fewer than 2 points)."""
    if len(x) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(x, y).statistic
    return None if tau is None or np.isnan(tau) else float(tau)


def selection_value(rows: Sequence[dict[str, Any]], budgets: Sequence[float] | None = None
                    ) -> list[dict[str, Any]]:
    """Per latency budget: the best stitch by measured latency vs the one FLOPs would pick.

    The FLOPs chooser is given its best chance: latency ~ c0 + c1 * FLOPs fitted (non-negative
    least squares) on the same measured stitches; it then takes the most accurate stitch whose
    FLOPs-estimated latency fits the budget. ``accuracy_lost`` is measured pick minus FLOPs pick
    (>= 0) when the FLOPs pick meets the budget; ``flops_pick_over_budget`` says when it in fact
    runs slower than the budget (then ``accuracy_lost`` is None: that pick is not deployable).
    """
    from .predict import LatencyModel

    pts = [r for r in rows if r.get("accuracy") is not None and r.get("latency") is not None
           and r.get("flops") is not None and r.get("latency_source") == "measured"]
    if len(pts) < 2:
        return []
    model = LatencyModel.fit(pts, [r["latency"] for r in pts], kind="flops")
    est = dict(zip([r["id"] for r in pts], model.predict(pts)))
    if budgets is None:
        front, _ = pareto_front([{"id": r["id"], "acc": r["accuracy"], "lat": r["latency"]}
                                 for r in pts], [("acc", "max"), ("lat", "min")])
        by = {r["id"]: r for r in pts}
        budgets = sorted({by[i]["latency"] for i in front})
    out = []
    for b in budgets:
        fit_m = [r for r in pts if r["latency"] <= b]
        fit_f = [r for r in pts if est[r["id"]] <= b]
        best_m = max(fit_m, key=lambda r: (r["accuracy"], -r["latency"]), default=None)
        best_f = max(fit_f, key=lambda r: (r["accuracy"], -r["flops"]), default=None)
        out.append({
            "budget_ms": float(b),
            "measured_pick": None if best_m is None else best_m["id"],
            "measured_accuracy": None if best_m is None else best_m["accuracy"],
            "flops_pick": None if best_f is None else best_f["id"],
            "flops_accuracy": None if best_f is None else best_f["accuracy"],
            "flops_pick_latency_ms": None if best_f is None else best_f["latency"],
            "flops_pick_over_budget": None if best_f is None else bool(best_f["latency"] > b),
            # A FLOPs pick that in fact misses the budget is no valid choice: no accuracy
            # comparison then, the violation is the finding.
            "accuracy_lost": (None if best_m is None or best_f is None or best_f["latency"] > b
                              else float(best_m["accuracy"] - best_f["accuracy"])),
        })
    return out
