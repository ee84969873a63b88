"""Selection: Pareto fronts, budgets, spread, FLOPs comparison, honest fallbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esta_export.errors import SelectionError
from esta_export.profiling.compiled import profile_compiled
from esta_export.profiling.store import ProfileStore
from esta_export.pareto import kendall_tau, pareto_front, selection_value, spread_along_front
from esta_export.select import select_compiled
from fixtures.compiled import make_compiled

FAST = dict(min_runs=5, min_seconds=0.01, memory=False)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    compiled = make_compiled(tmp_path_factory.mktemp("out"))
    profile_compiled(compiled, "cpu", **FAST)
    return compiled


def test_pareto_front_and_dominators() -> None:
    pts = [{"id": "a", "acc": 0.7, "lat": 1.0}, {"id": "b", "acc": 0.8, "lat": 2.0},
           {"id": "c", "acc": 0.75, "lat": 2.5}, {"id": "d", "acc": 0.9, "lat": 3.0}]
    front, dom = pareto_front(pts, [("acc", "max"), ("lat", "min")])
    assert front == ["a", "b", "d"] and dom == {"c": "b"}
    front3, _ = pareto_front([{**p, "mem": m} for p, m in zip(pts, [5, 5, 1, 5])],
                             [("acc", "max"), ("mem", "min"), ("lat", "min")])
    assert "c" in front3  # the least memory keeps it on the 3-objective front


def test_spread_and_tau() -> None:
    front = [{"id": i, "latency": float(v)} for i, v in enumerate([1, 1.1, 1.2, 5, 9, 10])]
    assert spread_along_front(front, 3) == [0, 3, 5]
    assert spread_along_front(front, 10) == [0, 1, 2, 3, 4, 5]
    assert spread_along_front(front, 1) == [5]
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1], [1]) is None


def test_selection_value_counts_what_flops_loses() -> None:
    # "x" has few FLOPs but runs slowly on the device (memory-bound), "y" the opposite.
    rows = [{"id": "x", "flops": 1e9, "latency": 5.0, "accuracy": 0.80},
            {"id": "y", "flops": 3e9, "latency": 2.0, "accuracy": 0.78},
            {"id": "z", "flops": 2e9, "latency": 1.0, "accuracy": 0.60},
            {"id": "w", "flops": 6e9, "latency": 6.0, "accuracy": 0.85}]
    rows = [{**r, "latency_source": "measured"} for r in rows]
    val = {v["budget_ms"]: v for v in selection_value(rows, budgets=[1.0, 2.0, 6.0])}
    assert val[2.0]["measured_pick"] == "y"
    # FLOPs (calibrated on these very stitches) thinks "x" fits 2 ms; on the device it takes 5.
    assert val[2.0]["flops_pick"] == "x" and val[2.0]["flops_pick_over_budget"] is True
    assert val[2.0]["accuracy_lost"] is None
    for v in val.values():
        assert v["accuracy_lost"] is None or v["accuracy_lost"] >= 0


def test_select_writes_front_of_measured_stitches(profiled: Path) -> None:
    res = select_compiled(profiled, "cpu")
    path = Path(res["path"])
    assert path == profiled.parent.parent / "select" / "cpu.json"
    data = json.loads(path.read_text())
    assert data["schema"] == "esta-export/selection" and data["schema_version"] == "1.0"
    assert data["accuracy_source"].startswith("supernet records")
    by = {s["id"]: s for s in data["stitches"]}
    assert data["front"] and set(data["selected"]) <= set(data["front"])
    for i in data["front"]:
        assert by[i]["latency_source"] == "measured" and by[i]["on_front"]
    for s in data["stitches"]:
        if not s["on_front"]:
            d = by[s["dominated_by"]]
            assert d["accuracy"] >= s["accuracy"] and d["latency"] <= s["latency"]
    assert set(data["flops_front"]) <= set(by)
    assert -1.0 <= data["kendall_tau"] <= 1.0 and data["kendall_tau_n"] == len(by)
    assert any("dropped" in w for w in data["warnings"])  # the compile 'failed' entry


def test_budget_max_stitches_and_min_accuracy(profiled: Path) -> None:
    full = select_compiled(profiled, "cpu")
    by = {s["id"]: s for s in full["stitches"]}
    lats = sorted(by[i]["latency"] for i in full["front"])
    budget = lats[len(lats) // 2]
    res = select_compiled(profiled, "cpu", latency_budget_ms=budget)
    assert res["selected"] and all(by[i]["latency"] <= budget for i in res["selected"])
    two = select_compiled(profiled, "cpu", max_stitches=2)
    assert len(two["selected"]) == min(2, len(full["front"]))
    with pytest.raises(SelectionError, match="fastest stitch"):
        select_compiled(profiled, "cpu", latency_budget_ms=lats[0] / 1000)
    with pytest.raises(SelectionError, match="min accuracy"):
        select_compiled(profiled, "cpu", min_accuracy=1.5)


def test_unstable_and_predicted_latencies_are_never_silent(profiled: Path, tmp_path) -> None:
    store = ProfileStore(tmp_path / "s.jsonl")
    recs = ProfileStore(profiled.parent.parent / "profiles" / "cpu.jsonl").records()
    shaky = {**recs[0], "unstable": True}
    store.append([shaky] + recs[3:])  # stitches 1 and 2 unprofiled: they get predicted
    res = select_compiled(profiled, "cpu", store.path, out_path=tmp_path / "sel.json")
    by = {s["id"]: s for s in res["stitches"]}
    assert by[recs[0]["stitch_id"]]["unstable"] is True
    assert any("unstable" in w for w in res["warnings"])
    assert by[recs[1]["stitch_id"]]["latency_source"] == "predicted"
    for i in res["front"]:
        if by[i]["latency_source"] == "predicted":
            assert any(f"stitch {i} is on the front with a PREDICTED" in w for w in res["warnings"])


def test_without_accuracy_falls_back_to_latency_order(tmp_path) -> None:
    compiled = make_compiled(tmp_path, accuracy=False)
    profile_compiled(compiled, "cpu", stitch_ids=[0, 1, 2], **FAST)
    res = select_compiled(compiled, "cpu", max_stitches=2)
    assert res["mode"] == "latency-only" and res["front"] == []
    assert any("no stitch has an accuracy" in w for w in res["warnings"])
    with pytest.raises(SelectionError, match="no profile records"):
        select_compiled(compiled, "cpu", tmp_path / "empty.jsonl")
