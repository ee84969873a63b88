"""Fronts that know the measurement noise: dominance beyond intervals, ties, figure intervals."""

from __future__ import annotations

import pytest

from esta_export.pareto import (figure_intervals, jaccard, kendall_tau, kendall_tau_bounds, pareto_front,
                                pareto_front_intervals)

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
    tau = kendall_tau([r["flops"] for r in rows], [r["latency"] for r in rows])
    assert -1 <= lo <= tau <= hi <= 1 and out["level"] == 0.95 and "bootstrap" in out["method"]
    assert "overlap" in out["kendall_tau_method"]
    if out["selection_value_mean_ci"] is not None:
        a, b = out["selection_value_mean_ci"]
        assert 0 <= a <= b
    # Zero-width intervals give a zero-width tau interval at the point value.
    flat = [{**r, "latency_ci": [r["latency"], r["latency"]]} for r in rows]
    f = figure_intervals(flat, draws=20)
    assert f["kendall_tau_ci"][0] == pytest.approx(f["kendall_tau_ci"][1]) == pytest.approx(tau)


def test_tau_bounds_hold_the_observed_tau_however_wide_the_intervals() -> None:
    """A perfectly ordered family whose neighbours' intervals overlap: the observed tau (1.0) is
    the upper end, never above the interval (a draw-and-recompute interval put it there); only
    the pairs the intervals cannot order move the lower end; ties in FLOPs count as tau-b does."""
    lat = [1.0, 2.0, 3.0, 4.0, 5.0]
    flops = [1, 2, 3, 4, 5]
    assert kendall_tau_bounds(flops, lat, [None] * 5) == pytest.approx([1.0, 1.0])
    # +-0.6: the 4 neighbouring pairs overlap, the other 6 stay ordered: (6 - 4) / 10.
    assert kendall_tau_bounds(flops, lat, [[v - 0.6, v + 0.6] for v in lat]) == pytest.approx([0.2, 1.0])
    swapped = [1.0, 3.0, 2.0, 4.0, 5.0]
    assert kendall_tau_bounds(flops, swapped, [[v - 0.1, v + 0.1] for v in swapped]) == \
        pytest.approx([kendall_tau(flops, swapped)] * 2)
    ties = [1, 1, 2, 3]
    assert kendall_tau_bounds(ties, lat[:4], [None] * 4) == \
        pytest.approx([kendall_tau(ties, lat[:4])] * 2)
    rows = [row(i, 0.8 + 0.01 * i, v, [v * 0.7, v * 1.3], flops=f) for i, (v, f) in
            enumerate(zip(lat, flops))]
    lo, hi = figure_intervals(rows, draws=30)["kendall_tau_ci"]
    assert lo < hi == pytest.approx(1.0)
    assert kendall_tau_bounds([1], [1.0], [None]) is None
