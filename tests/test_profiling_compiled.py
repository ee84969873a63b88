"""profile_compiled on a real ONNX Runtime compiled folder: cache, budget + predicted front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esta_export.errors import ProfileError
from esta_export.fsutil import atomic_write_json, sha256_file
from esta_export.profiling.compiled import _pareto_ids, profile_compiled
from esta_export.profiling.store import ProfileStore
from fixtures.compiled import make_compiled  # noqa: F401  (test_evaluate, test_report reuse it)
from fixtures.routes import family  # noqa: F401

FAST = dict(min_runs=5, min_seconds=0.01)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    return make_compiled(tmp_path_factory.mktemp("out"))


def test_profiles_every_stitch_with_provenance_then_hits_the_cache(compiled: Path, tmp_path) -> None:
    store = tmp_path / "cpu.jsonl"
    res = profile_compiled(compiled, "cpu", store, stitch_ids=[0, 1, 5], **FAST)
    assert sorted(res.measured) == [0, 1, 5] and not res.cached
    rec = res.measured[5]
    assert rec["latency_ms"]["n"] >= 5 and rec["latency_ms"]["median"] > 0
    assert rec["artifact_sha256"] == sha256_file(compiled / "stitch_005/model.onnx")
    assert rec["env"]["cpu_model"] and rec["env_hash"] and rec["protocol"]["min_runs"] == 5
    assert rec["input_shape"] == [1, 3, 8, 8] and rec["precision"] == "fp32"
    # the bundle runtime's session settings, the switch-in apart, an interval on the median
    assert rec["session"]["intra_op_spinning"] is False and rec["session"]["source"] == "target"
    assert rec["switch_in_ms"] is None or rec["switch_in_ms"]["calls"] == 1
    lo, hi = rec["latency_ms"]["median_ci"]
    assert lo <= rec["latency_ms"]["median"] <= hi
    # hardware truth comes from the fingerprint: the cpu target matches any x86-64/aarch64 CPU
    assert rec["verified_on_hardware"] is True and rec["hardware"]["matches"]
    assert rec["env"]["processor"]["arch"] == rec["env"]["machine"] or rec["env"]["processor"]["arch"]
    assert rec["peak_rss_mb"] is not None and rec["peak_rss_mb"] >= 0 and rec["memory_method"]
    assert len(ProfileStore(store).records()) == 3
    again = profile_compiled(compiled, "cpu", store, stitch_ids=[0, 1, 5], **FAST)
    assert sorted(again.cached) == [0, 1, 5] and not again.measured
    assert len(ProfileStore(store).records()) == 3  # unchanged work is never measured twice
    fresh = profile_compiled(compiled, "cpu", store, stitch_ids=[0], fresh=True, memory=False,
                             **FAST)
    assert list(fresh.measured) == [0] and len(ProfileStore(store).records()) == 4


def test_budget_profiles_a_subset_and_measures_the_predicted_front(compiled: Path,
                                                                   tmp_path) -> None:
    store = tmp_path / "cpu.jsonl"
    res = profile_compiled(compiled, "cpu", store, budget=7, memory=False, **FAST)
    rows = json.loads((compiled.parent.parent / "export" / "export.json").read_text())["stitches"]
    assert len(res.measured) >= 7
    assert not set(res.predicted) & set(res.measured)
    # Every stitch is either measured or predicted (on a noisy machine the front can pull all of
    # them into the measured set; then nothing is left to predict, which is still correct).
    assert set(res.predicted) | set(res.measured) == {r["id"] for r in rows}
    lat = {i: r["latency_ms"]["median"] for i, r in res.measured.items()} | res.predicted
    assert _pareto_ids(rows, lat) <= set(res.measured)  # nothing on the front is a guess
    if res.predicted:
        assert res.predictor["leave_one_out"]["n_eval"] >= 1


def test_refuses_unbuilt_engines_and_bad_input(compiled: Path, tmp_path) -> None:
    comp = json.loads((compiled / "compile.json").read_text())
    other = tmp_path / "c"
    other.mkdir()
    atomic_write_json(other / "compile.json", {**comp, "engines_built": False,
                                               "device_build_required": True, "export": None})
    with pytest.raises(ProfileError, match="must be built on the device"):
        profile_compiled(other, "cpu", tmp_path / "s.jsonl")
    with pytest.raises(Exception, match="not compiled"):
        profile_compiled(compiled, "cpu", tmp_path / "s.jsonl", stitch_ids=[12345])
    with pytest.raises(ProfileError, match="compiled for target cpu"):
        profile_compiled(compiled, "cpu-int8", tmp_path / "s.jsonl")
