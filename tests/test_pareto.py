"""Fronts that know the measurement noise: dominance beyond intervals, ties, figure intervals."""

from __future__ import annotations

import pytest

from esta_export.pareto import (figure_intervals, jaccard, pareto_front, pareto_front_intervals)

OBJ = [("accuracy", "max"), ("latency", "min")]


def row(i, acc, lat, ci=None, flops=None):
    return {"id": i, "accuracy": acc, "latency": lat, "latency_ci": ci,
            "flops": flops if flops is not None else lat * 1e6, "latency_source": "measured"}


def test_dominance_only_beyond_the_intervals() -> None:
    rows = [row("a", 0.90, 1.00, [0.98, 1.02]),
            row("b", 0.89, 1.01, [0.99, 1.03]),   # slower by its median, intervals overlap: tie
            row("c", 0.88, 1.50, [1.45, 1.55]),   # slower beyond the intervals: dominated
            row("d", 0.95, 2.00, [1.90, 2.10])]
    point, _ = pareto_front(rows, OBJ)
    assert set(point) == {"a", "d"}
    front, dominated_by, ties = pareto_front_intervals(rows, OBJ)
    assert front == ["a", "b", "d"]           # sorted by latency
    assert set(dominated_by) == {"c"} and dominated_by["c"] in {"a", "b"}
    assert ties == {"b": ["a"]}
    # Without intervals the interval front is the point front.
    bare = [{**r, "latency_ci": None} for r in rows]
    f2, d2, t2 = pareto_front_intervals(bare, OBJ)
    assert f2 == point and t2 == {} and set(d2) == {"b", "c"}


def test_equal_accuracy_needs_a_latency_gap_beyond_the_intervals() -> None:
    rows = [row(1, 0.9, 1.0, [0.9, 1.1]), row(2, 0.9, 1.05, [1.0, 1.2])]
    front, _, ties = pareto_front_intervals(rows, OBJ)
    assert front == [1, 2] and ties == {2: [1]}
    rows[1].update(latency=1.15, latency_ci=[1.11, 1.2])
    front, dom, ties = pareto_front_intervals(rows, OBJ)
    assert front == [1] and dom == {2: 1} and ties == {}


def test_jaccard() -> None:
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert jaccard([], []) == 1.0 and jaccard([1], [1]) == 1.0


def test_figure_intervals_cover_the_point_values() -> None:
    rows = [row(i, 0.80 + 0.01 * i, 1.0 + 0.1 * i + (0.3 if i % 3 == 0 else 0),
                [0.95 + 0.1 * i, 1.05 + 0.1 * i + (0.3 if i % 3 == 0 else 0)], flops=(1 + i) * 1e6)
            for i in range(10)]
    out = figure_intervals(rows, draws=50)
    lo, hi = out["kendall_tau_ci"]
    assert -1 <= lo <= hi <= 1 and out["level"] == 0.95 and "bootstrap" in out["method"]
    if out["selection_value_mean_ci"] is not None:
        a, b = out["selection_value_mean_ci"]
        assert 0 <= a <= b
    # Zero-width intervals give a zero-width tau interval at the point value.
    flat = [{**r, "latency_ci": [r["latency"], r["latency"]]} for r in rows]
    f = figure_intervals(flat, draws=20)
    assert f["kendall_tau_ci"][0] == pytest.approx(f["kendall_tau_ci"][1])
