"""The stage contract: one layout, checked readers, accuracy and predictions recorded once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from esta_export import evaluate, stages
from esta_export.errors import EstaError, FormatError
from esta_export.profiling.compiled import profile_compiled
from esta_export.select import select_compiled
from fixtures.compiled import make_compiled
from fixtures.family import make_family
from fixtures.routes import family

FAST = dict(min_runs=3, min_seconds=0.0, memory=False)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    return make_family(tmp_path_factory.mktemp("job"))


def test_layout_is_spelled_once(tmp_path: Path) -> None:
    out = stages.Layout(tmp_path)
    c = out.compiled_dir("cpu")
    assert c == tmp_path / "compiled" / "cpu"
    assert stages.default_store_path(c, "cpu") == out.profile_store("cpu") == tmp_path / "profiles/cpu.jsonl"
    assert stages.default_select_path(c, "cpu") == out.selection("cpu")
    assert stages.default_accuracy_path(c, "cpu") == out.accuracy_store("cpu")
    assert stages.default_bundle_dir(c, "cpu") == out.bundle_dir("cpu")
    assert stages.default_compiled_dir(out.export_dir, "cpu") == c
    assert stages.predictions_path(out.profile_store("cpu")).name == "cpu.predictions.json"
    loose = tmp_path / "elsewhere"   # a compiled folder outside the layout keeps its own files
    assert stages.default_store_path(loose, "cpu") == loose / "profiles" / "cpu.jsonl"


def _edit(src: Path, dst: Path, fn) -> Path:
    doc = json.loads(src.read_text())
    fn(doc)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(doc))
    return dst


def _one_line(err: EstaError, *words: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("field,value,words", [
    ("output.num_classes", 0, ["output.num_classes", "[1,"]),
    ("input.labels", ["a", "b"], ["input.labels", "num_classes"]),
    ("stitches.0.flops", -5, ["stitches[0].flops"]),
    ("stitches.0.accuracy", float("nan"), ["stitches[0].accuracy", "finite"]),
    ("stitches.0.max_abs_error", float("inf"), ["max_abs_error", "finite"]),
    ("stitches.0.onnx", "../../etc/passwd", ["stitches[0].onnx", "inside"]),
    ("stitches.0.id", True, ["stitches[0].id", "integer"]),
    ("input.std", [0.2, 0.0, 0.2], ["input.std[1]"]),
    ("schema_version", "7.0", ["newer"]),
])
def test_export_reader_names_file_field_and_fix(job: Path, tmp_path: Path, field, value, words) -> None:
    def edit(doc):
        *path, last = field.split(".")
        d = doc
        for k in path:
            d = d[int(k)] if k.isdigit() else d[k]
        d[int(last) if last.isdigit() else last] = value
    bad = _edit(job / "export" / "export.json", tmp_path / "export.json", edit)
    with pytest.raises(FormatError) as err:
        stages.read_export(tmp_path)
    _one_line(err.value, str(bad), "re-run", *words)


def test_compile_reader_and_cross_checks(job: Path, tmp_path: Path) -> None:
    comp = job / "compiled" / "cpu" / "compile.json"
    for edit, words in [
        (lambda d: d["artifacts"][0].update(sha256="xyz"), ["artifacts[0].sha256", "sha256"]),
        (lambda d: d["artifacts"][0].update(path="/abs/model.onnx"), ["artifacts[0].path"]),
        (lambda d: d.pop("target"), ["'target'"]),
        (lambda d: d.update(schema="something/else"), ["schema"]),
    ]:
        _edit(comp, tmp_path / "c" / "compile.json", edit)
        with pytest.raises(FormatError) as err:
            stages.read_compile(tmp_path / "c")
        _one_line(err.value, "compile.json", *words)
    # compiled from another supernet than the export beside it
    other = tmp_path / "job2"
    import shutil
    shutil.copytree(job / "export", other / "export")
    _edit(comp, other / "compiled" / "cpu" / "compile.json",
          lambda d: d.update(supernet_sha256="f" * 64))
    with pytest.raises(FormatError) as err:
        stages.read_compiled(other / "compiled" / "cpu")
    _one_line(err.value, "supernet_sha256", "another supernet")


def test_selection_reader_checks_target_and_ids(job: Path, tmp_path: Path) -> None:
    sel = job / "select" / "cpu.json"
    assert stages.read_selection(sel, "cpu")["target"] == "cpu"
    with pytest.raises(FormatError) as err:
        stages.read_selection(sel, "cpu-int8")
    _one_line(err.value, "'target'", "cpu-int8")
    for edit, words in [
        (lambda d: d["selected"].append(999), ["selected", "999"]),
        (lambda d: d["stitches"][0].update(latency=float("nan")), ["stitches[0].latency", "finite"]),
        (lambda d: d["stitches"][0].update(latency=-1.0), ["stitches[0].latency"]),
        (lambda d: d["stitches"][0].update(latency_source="guessed"), ["latency_source"]),
        (lambda d: d.update(kendall_tau=3.0), ["kendall_tau"]),
    ]:
        bad = _edit(sel, tmp_path / "s.json", edit)
        with pytest.raises(FormatError) as err:
            stages.read_selection(bad)
        _one_line(err.value, str(bad), *words)


def test_writers_refuse_nan(tmp_path: Path, job: Path) -> None:
    doc = json.loads((job / "select" / "cpu.json").read_text())
    doc["selection_value"] = [{"accuracy_lost": float("nan")}]
    with pytest.raises(FormatError, match="finite"):
        stages.write_selection(tmp_path / "s.json", doc)
    assert not (tmp_path / "s.json").exists()


def test_bad_profile_records_are_skipped_with_the_field(tmp_path: Path) -> None:
    from esta_export.profiling.store import ProfileStore
    good = {"artifact_sha256": "a" * 64, "target": "cpu", "batch": 1, "stitch_id": 0,
            "latency_ms": {"median": 1.0, "cv": 0.01}, "env_hash": "e", "unstable": False}
    store = ProfileStore(tmp_path / "p.jsonl")
    store.append([good, {**good, "artifact_sha256": "b" * 64, "stitch_id": 1,
                         "latency_ms": {"median": float("nan")}},
                  {**good, "artifact_sha256": "c" * 64, "stitch_id": 2, "batch": "one"}])
    recs = stages.read_profile_records(store.path, "cpu", 1)
    assert list(recs.latest) == ["a" * 64]
    assert any("latency_ms.median" in w for w in recs.warnings)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    return make_compiled(tmp_path_factory.mktemp("out"), family()[:5])


def test_accuracy_is_recorded_once_per_artifact_and_data(compiled: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=np.arange(16) % 10)
    store = tmp_path / "acc.jsonl"
    first = evaluate.recorded_accuracy(compiled, "cpu", tmp_path / "val.npz", store_path=store)
    assert len(stages.AccuracyStore(store).records()) == len(first) == 5

    def no_run(*a, **k):
        raise AssertionError("ran an artifact whose accuracy is recorded")
    monkeypatch.setattr(evaluate, "_evaluate_row", no_run)
    again = evaluate.recorded_accuracy(compiled, "cpu", tmp_path / "val.npz", store_path=store)
    assert again == first
    np.savez(tmp_path / "val2.npz", x=x[:8], y=np.arange(8) % 10)   # other data: measured again
    with pytest.raises(AssertionError, match="recorded"):
        evaluate.recorded_accuracy(compiled, "cpu", tmp_path / "val2.npz", store_path=store)


def test_select_reads_the_predictions_profile_persisted(compiled: Path, tmp_path: Path) -> None:
    store = tmp_path / "p.jsonl"
    profile_compiled(compiled, "cpu", store, stitch_ids=[0, 1, 2], **FAST)
    recs = stages.read_profile_records(store, "cpu", 1).latest
    comp, export, _ = stages.read_compiled(compiled)
    sha = {r["id"]: r["sha256"] for r in stages.stitch_table(comp, export)}
    stages.write_predictions(store, {
        "target": "cpu", "batch": 1,
        "fitted_on": {h: r["latency_ms"]["median"] for h, r in recs.items()},
        "predicted": {sha[3]: 123.0, sha[4]: 124.0}, "extrapolated": [sha[4]],
        "predictor": {"model": {"kind": "test"}}})
    sel = select_compiled(compiled, "cpu", store, out_path=tmp_path / "s.json")
    by = {s["id"]: s for s in sel["stitches"]}
    assert (by[3]["latency"], by[4]["latency"]) == (123.0, 124.0)
    assert by[3]["latency_source"] == "predicted"
    assert sel["predictor"]["source"] == "esta-export profile (persisted)"
    assert any("stitch 4 latency is extrapolated" in w for w in sel["warnings"])
    # a record added since the fit: the persisted predictions are stale, select fits again
    profile_compiled(compiled, "cpu", store, stitch_ids=[0], fresh=True, **FAST)
    sel = select_compiled(compiled, "cpu", store, out_path=tmp_path / "s2.json")
    assert sel["predictor"]["source"].startswith("fitted by select")
    assert {s["id"]: s for s in sel["stitches"]}[3]["latency"] != 123.0


def test_profile_persists_what_it_predicted(tmp_path_factory) -> None:
    compiled = make_compiled(tmp_path_factory.mktemp("big"), family())
    store = compiled / "p.jsonl"
    prof = profile_compiled(compiled, "cpu", store, budget=4, **FAST)
    if not prof.predicted:
        pytest.skip("the measured front pulled in every stitch (a noisy machine)")
    doc = stages.read_predictions(store, "cpu", 1)
    comp, export, _ = stages.read_compiled(compiled)
    sha = {r["id"]: r["sha256"] for r in stages.stitch_table(comp, export)}
    assert doc["predicted"] == pytest.approx({sha[i]: ms for i, ms in prof.predicted.items()})
    assert len(doc["fitted_on"]) == len(prof.records)


def test_report_lists_each_target_once(compiled: Path, tmp_path: Path) -> None:
    from esta_export.report import write_report
    out = compiled.parent.parent
    profile_compiled(compiled, "cpu", stitch_ids=[0, 1, 2], **FAST)
    sel = select_compiled(compiled, "cpu")["path"]
    paths = write_report(out, tmp_path / "r", selections=[sel], compiled=[compiled])
    report = json.loads(paths["report.json"].read_text())
    assert [t["target"] for t in report["targets"]] == ["cpu"]
