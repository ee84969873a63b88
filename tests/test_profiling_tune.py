"""profile --tune: candidates measured on representative stitches, the choice used and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esta_export.profiling.compiled import profile_compiled, profile_in_clean_process
from esta_export.profiling.tune import candidates, representative, tune_path, tune_session
from esta_export.runtime.timing import TimingProtocol
from esta_export.targets import load_target
from test_predict import family
from test_profiling_compiled import FAST, make_compiled


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    fam = family()[:6]
    return make_compiled(tmp_path_factory.mktemp("out"), fam)


def test_candidates_and_representatives() -> None:
    c = candidates("onnxruntime", 2)
    assert len(c) == 8 and {x["threads"] for x in c} == {1, 2}
    assert {(x["intra_op_spinning"], x["share_weights"]) for x in c} == {
        (a, b) for a in (False, True) for b in (False, True)}
    assert {x["performance_hint"] for x in candidates("openvino", 1)} == {"LATENCY", "THROUGHPUT"}
    rows = [{"id": i, "flops": f} for i, f in enumerate([5, 1, 9, 3, 7])]
    assert representative(rows) == [1, 0, 2]  # fastest, median, slowest by FLOPs


def test_tune_records_candidates_and_profile_uses_the_choice(compiled: Path, tmp_path) -> None:
    target = load_target("cpu")
    store = tmp_path / "p.jsonl"
    proto = TimingProtocol(min_runs=5, min_seconds=0.01, warmup_s=0.0, warmup_min=1)
    out = tune_session(compiled, target, store, protocol=proto)
    saved = json.loads(tune_path(store).read_text())
    assert saved["choice"] == out["choice"] and len(saved["candidates"]) == len(candidates("onnxruntime", saved["cores"]))
    for c in saved["candidates"]:
        assert c["geomean_ms"] > 0 and set(c["median_ms"]) == {str(i) for i in saved["stitches"]}
    pool = [c for c in saved["candidates"] if c["dispersion"] <= saved["goal"]] or saved["candidates"]
    assert min(c["geomean_ms"] for c in pool) == next(
        c["geomean_ms"] for c in saved["candidates"]
        if all(c[k] == v for k, v in saved["choice"].items()))
    # profile picks the recorded choice up (same machine) and every record says so
    res = profile_compiled(compiled, target, store, memory=False, **FAST)
    for rec in res.measured.values():
        assert rec["session"]["source"] == "tuned"
        assert all(rec["session"][k] == v for k, v in out["choice"].items())


def test_clean_process_profile_matches_in_process_result_shape(compiled: Path, tmp_path) -> None:
    store = tmp_path / "p.jsonl"
    res = profile_in_clean_process(compiled, load_target("cpu"), store, memory=False, **FAST)
    assert len(res.measured) == 6 and res.store == store
    assert all(r["latency_ms"]["median"] > 0 for r in res.measured.values())
    from esta_export.errors import EstaError
    with pytest.raises(EstaError, match="stitch ids not compiled"):
        profile_in_clean_process(compiled, load_target("cpu"), store, stitch_ids=["77"], **FAST)
