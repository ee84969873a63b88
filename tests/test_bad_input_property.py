"""Property test (issue 16): edit valid stage files and manifests field by field.

For every file kind a user or another stage hands us (export.json, compile.json, a selection, a
profile record, the bundle manifest, the supernet spec, a run configuration, a target), start from
a real, valid document and apply one edit at one place: a wrong type, NaN, an infinity, a negative
number, a huge number, a missing key, an extra key. The reader must then either accept the
document or raise an ``EstaError`` whose message is one line. Nothing else may escape. For the
run configuration the same edits go through the real command line (``run --config X --dry-run``)
and must end in exit status 0, or exit status 2 with one error line and no traceback.

Unlike tests/test_fuzz.py (random bytes and values against the parsers), every edit here keeps the
rest of the document valid, so it reaches the check for exactly the field it changed.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "corpus"))
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_WORK: dict[str, str] = {}
HOSTILE = [float("nan"), float("inf"), -float("inf"), -1, -1.5, 0, 1 << 63, 1e308, 10 ** 30, "x", "", "NaN",
           True, None, [], [1], {}, {"a": 1}, [[1]], "../../escape", "/etc/passwd", "a" * 5000]


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document (dict keys and list items), outermost first."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):          # the first items stand for the rest
            out += _paths(v, prefix + (i,))
    return out


def _apply(doc: Any, path: tuple, edit: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    if edit == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif edit == "extra":
        target = parent[key]
        if isinstance(target, dict):
            target["unexpected_field"] = value
        elif isinstance(target, list):
            target.append(value)
        else:
            parent[key] = value
    else:
        parent[key] = value
    return doc


def edits(doc: Any):
    places = _paths(doc)
    return st.tuples(st.sampled_from(places), st.sampled_from(["set", "set", "set", "delete", "extra"]),
                     st.sampled_from(HOSTILE))


def one_line_or_value(read: Callable[[Any], Any], doc: Any) -> None:
    from esta_export.errors import EstaError

    try:
        read(doc)
    except EstaError as err:
        msg = str(err)
        assert "\n" not in msg and msg.strip(), repr(msg)
        assert len(msg) < 2000, msg[:200]
    # anything else (KeyError, TypeError, ValueError, ...) fails the test with its traceback


# -- valid seeds, from real stage outputs of a tiny family ---------------------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Any]:
    import esta_corpus as C

    from esta_export.bundle.writer import write_bundle
    from esta_export.cli import main

    d = tmp_path_factory.mktemp("property")
    sn = C.tiny_supernet(d / "sn.safetensors")
    out = d / "out"
    assert main(["export", str(sn), "--out", str(out / "export"), "--stitches", "0-1", "-q"]) == 0
    assert main(["compile", str(out / "export"), "--target", "cpu", "--out", str(out / "compiled" / "cpu"),
                 "--samples", "4"]) == 0
    store = out / "profiles" / "cpu.jsonl"
    assert main(["profile", str(out / "compiled" / "cpu"), "--target", "cpu", "--runs", "3", "--seconds", "0.01",
                 "--no-memory", "--store", str(store)]) == 0
    assert main(["select", str(out / "compiled" / "cpu"), "--target", "cpu", "--store", str(store),
                 "--out", str(out / "select" / "cpu.json")]) == 0
    bundle = write_bundle(out, "cpu", d / "bundle")
    import tomllib

    _WORK["dir"] = str(d)

    return {
        "dir": d,
        "export": json.loads((out / "export" / "export.json").read_text()),
        "compile": json.loads((out / "compiled" / "cpu" / "compile.json").read_text()),
        "selection": json.loads((out / "select" / "cpu.json").read_text()),
        "record": json.loads(store.read_text().splitlines()[0]),
        "manifest": json.loads((bundle / "manifest.json").read_text()),
        "spec": C.spec_json(sn),
        "target": tomllib.loads((ROOT / "targets" / "cpu.toml").read_text()),
        "config": {"supernet": str(sn), "target": "cpu", "out": str(d / "job"), "stitches": "0-1", "runs": 3,
                   "seconds": 0.5, "latency_budget_ms": 5.0, "max_stitches": 2, "min_accuracy": 0.5,
                   "archive": False, "fresh": False},
    }


def _file(doc, name: str) -> Path:
    """The edited document as the file a reader gets (json.dumps writes NaN/Infinity as is)."""
    d = Path(_WORK["dir"]) / "edited"
    d.mkdir(exist_ok=True)
    (d / name).write_text(json.dumps(doc))
    return d


def _read_export(doc):
    from esta_export.stages import read_export
    return read_export(_file(doc, "export.json"))


def _read_compile(doc):
    from esta_export.stages import read_compile
    return read_compile(_file(doc, "compile.json"))


def _read_selection(doc):
    from esta_export.stages import read_selection
    return read_selection(_file(doc, "cpu.json") / "cpu.json", "cpu")


def _read_record(doc):
    """The store is append-only and read tolerantly: a bad record is skipped with a one-line
    reason (or the whole store refused with an EstaError), never used."""
    from esta_export.stages import read_profile_records
    store = _file(doc, "x") / "cpu.jsonl"
    store.write_text(json.dumps(doc) + "\n")
    recs = read_profile_records(store, "cpu")
    assert all("\n" not in w for w in recs.warnings), recs.warnings
    if not recs.latest:
        from esta_export.errors import ProfileError
        raise ProfileError(f"skipped: {recs.warnings[0] if recs.warnings else 'no record'}")
    for rec in recs.latest.values():       # what is used downstream has a usable median
        med = rec["latency_ms"]["median"]
        assert isinstance(med, (int, float)) and not isinstance(med, bool) and math.isfinite(med) and med > 0


def _read_manifest(doc):
    from esta_export.runtime.manifest import load_manifest
    return load_manifest(_file(doc, "manifest.json"))


def _read_spec(doc):
    from esta_export.supernet.spec import SupernetSpec
    spec = SupernetSpec.loads(json.dumps(doc))
    assert SupernetSpec.loads(spec.dumps()) == spec      # what parses survives its own round trip


def _read_target(doc):
    import esta_export.targets as T
    t = T._build(T.Target, doc, Path("cpu.toml"), prefix="")
    T._check(t, Path("cpu.toml"))


def _read_config(doc):
    import argparse

    from esta_export.run import RunConfig
    path = _file(doc, "run.json") / "run.json"
    RunConfig.from_args(argparse.Namespace(config=str(path), supernet=None))


READERS = {"export": _read_export, "compile": _read_compile, "selection": _read_selection,
           "record": _read_record, "manifest": _read_manifest, "spec": _read_spec, "target": _read_target,
           "config": _read_config}


@pytest.mark.parametrize("kind", list(READERS))
def test_seed_is_valid(kind: str, seeds) -> None:
    READERS[kind](seeds[kind])


@pytest.mark.parametrize("kind", list(READERS))
def test_field_edits_end_in_one_line(kind: str, seeds) -> None:
    read, doc = READERS[kind], seeds[kind]

    @SETTINGS
    @given(edits(doc))
    def check(edit):
        path, how, value = edit
        one_line_or_value(read, _apply(doc, path, how, value))
    check()


def test_nonfinite_numbers_never_pass(seeds) -> None:
    """NaN or an infinity anywhere a number means something is refused, in every file kind."""
    from esta_export.errors import EstaError

    for kind, read in READERS.items():
        doc = seeds[kind]
        for path in _paths(doc):
            parent = doc
            for p in path:
                parent = parent[p]
            if isinstance(parent, bool) or not isinstance(parent, (int, float)):
                continue
            for bad in (math.nan, math.inf):
                try:
                    read(_apply(doc, path, "set", bad))
                except EstaError:
                    continue
                raise AssertionError(f"{kind}: {bad} at {'.'.join(map(str, path))} was accepted")


def test_run_config_edits_through_the_cli(seeds, capfd) -> None:
    """The one-line contract on the real command line: exit 0, or exit 2, one line, no traceback."""
    from test_bad_input_corpus import assert_one_line_error, run_cli

    doc, path = seeds["config"], seeds["dir"] / "cfg.json"

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits(doc))
    def check(edit):
        p, how, value = edit
        path.write_text(json.dumps(_apply(doc, p, how, value)))
        rc, out, err = run_cli(["run", "--config", path, "--dry-run"], capfd)
        if rc != 0:
            assert_one_line_error(rc, out, err, r".")
    check()
