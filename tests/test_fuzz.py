"""Property-based fuzzing of the parsers that read files users download or copy around (issue 7).

Property: whatever the input, a parser returns a value or raises ``esta_export.errors.EstaError``
(a subclass) with a one-line message; nothing else escapes. Parsers:

- ``spec``      the native supernet spec: ``SupernetSpec.loads`` (text) / ``from_json`` (values)
- ``target``    target TOML: ``load_target(path)`` on random text and on mutated real targets
- ``profile``   the profile store reader: ``ProfileStore.records`` / ``stages.read_profile_records`` / ``lookup``
- ``manifest``  the bundle manifest reader: ``load_manifest`` / ``check_manifest``

Inputs are random text and bytes, random JSON-like values, and *mutations of valid documents*
(one field replaced, removed or added), which reach far deeper than random text. The suite runs a
short deterministic pass (``derandomize=True``); ``benchmarks/bench_fuzz.py`` runs the same
targets much longer for release checks.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from esta_export.errors import EstaError  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="esta-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)

EXAMPLES_PER_PARSER = 200   # split over the parser's input strategies
SUITE = settings(max_examples=EXAMPLES_PER_PARSER, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))

# -- strategies -------------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-3, 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["1.0", "2.0", "x", "", "fp32", "onnxruntime", "cpu", "snnet_v1", "../x", "/etc/passwd"]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=16)
toml_values = st.recursive(
    st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["fp32", "int8", "onnxruntime", "openvino", "tensorrt", "cpu", "op", "LATENCY"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts/lists (the places a mutation can hit)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, valid: Any, values=json_values, max_mutations: int = 3) -> Any:
    """``valid`` with 1..max_mutations fields replaced, removed, or given an extra key."""
    doc = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if op == "replace":
                doc = draw(values)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        last = path[-1]
        if op == "replace":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=10))] = draw(values)
        elif isinstance(parent[last], list):
            parent[last].append(draw(values))
    return doc


def expect_esta_error_or_value(fn: Callable[[], Any]) -> Any:
    """Run a parser: a value, or an EstaError with a one-line message. Anything else fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except EstaError as err:
        assert "\n" not in str(err), f"multi-line error message: {err!r}"
        return None


# -- valid seeds ------------------------------------------------------------------------------------
def valid_spec() -> dict:
    from esta_export.supernet import AnchorConfig, SupernetSpec
    from esta_export.supernet.spec import AdaptationSpec, InputSpec, LoraSpec

    anchors = (AnchorConfig("Ti", 32, 2, 2, img_size=32, patch_size=8, num_classes=10),
               AnchorConfig("S", 48, 2, 3, img_size=32, patch_size=8, num_classes=10))
    spec = SupernetSpec(anchors, "snnet_v1", {"kernel_size": 2},
                        adaptation=AdaptationSpec(lora=LoraSpec(4, 8.0), stitch_lora=LoraSpec(2, 1.0, ()),
                                                  stitch_bias=True),
                        input=InputSpec(32, labels=tuple("abcdefghij")), training={"accuracy": {"0": 0.5}})
    return spec.to_json()


def valid_target() -> dict:
    return tomllib.loads((ROOT / "targets" / "cpu.toml").read_text())


def valid_record() -> dict:
    return {"schema": "esta-export/profile", "schema_version": "1.0", "stitch_id": 3, "route": "Ti[0-1]>S[2-3]",
            "artifact_sha256": "ab" * 32, "target": "cpu", "precision": "fp32", "batch": 1, "env_hash": "e1",
            "settings_hash": "s1", "measured": True, "latency_ms": {"median": 1.2, "p90": 1.4}, "time": "2025-01-01T00:00:00+00:00"}


def valid_manifest() -> dict:
    return {"schema": "esta-export/bundle", "schema_version": "1.0", "tool_version": "0.1.0",
            "supernet": {"sha256": "00" * 32}, "target": {"name": "cpu", "backend": "onnxruntime"},
            "input": {"name": "pixels", "shape": ["batch", 3, 32, 32], "image_size": 32, "mean": [0, 0, 0],
                      "std": [1, 1, 1], "labels": None},
            "output": {"name": "logits", "num_classes": 10}, "weights": None,
            "stitches": [{"id": 0, "route": "A0", "artifact": {"path": "stitch_000.onnx", "sha256": "00" * 32}}],
            "excluded": [], "files": [{"path": "stitch_000.onnx", "sha256": "00" * 32, "size": 1}]}


# -- targets: each takes one input, parses it, and lets only EstaError out --------------------------
def fuzz_spec_text(text: str) -> None:
    from esta_export.supernet.spec import SupernetSpec
    expect_esta_error_or_value(lambda: SupernetSpec.loads(text))


def fuzz_spec_value(value: Any) -> None:
    from esta_export.supernet.spec import SupernetSpec
    spec = expect_esta_error_or_value(lambda: SupernetSpec.from_json(value))
    if spec is not None:   # whatever parses must survive its own round trip
        assert SupernetSpec.loads(spec.dumps()) == spec


def _write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def fuzz_target_text(text: str) -> None:
    from esta_export.targets import load_target
    path = _write("fuzz.toml", text.encode("utf-8", "surrogatepass"))
    expect_esta_error_or_value(lambda: load_target(path))


def fuzz_target_value(value: Any) -> None:
    """A TOML table (as tomllib would return it) -> Target, through the same checks as a file."""
    from esta_export import targets as T

    def parse():
        t = T._build(T.Target, value, Path("fuzz.toml"), prefix="")
        T._check(t, Path("fuzz.toml"))
        return t
    expect_esta_error_or_value(parse)


def fuzz_profile_bytes(data: bytes) -> None:
    from esta_export.profiling.store import ProfileStore
    from esta_export.stages import read_profile_records
    store = ProfileStore(_write("fuzz.jsonl", data))
    expect_esta_error_or_value(lambda: (store.records(), read_profile_records(store.path, "cpu"),
                                        store.lookup("ab" * 32, "e1", "s1")))


def fuzz_profile_records(records: list) -> None:
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    fuzz_profile_bytes(lines)


def fuzz_manifest_text(text: str) -> None:
    from esta_export.bundle.manifest import load_manifest
    folder = WORK / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(text.encode("utf-8", "surrogatepass"))
    expect_esta_error_or_value(lambda: load_manifest(folder))


def fuzz_manifest_value(value: Any) -> None:
    from esta_export.bundle.manifest import check_manifest
    expect_esta_error_or_value(lambda: check_manifest(value))


# Parser name -> [(what, strategy, target)]: shared with benchmarks/bench_fuzz.py.
def fuzz_targets() -> dict[str, list[tuple[str, Any, Callable[[Any], None]]]]:
    spec, target, record, manifest = valid_spec(), valid_target(), valid_record(), valid_manifest()
    return {
        "spec": [("text", st.text() | st.sampled_from([json.dumps(spec)]), fuzz_spec_text),
                 ("json values", json_values, fuzz_spec_value),
                 ("mutated valid spec", mutated(spec), fuzz_spec_value)],
        "target": [("text", st.text(), fuzz_target_text),
                   ("TOML values", st.dictionaries(st.text(max_size=10), toml_values, max_size=6), fuzz_target_value),
                   ("mutated cpu.toml", mutated(target, toml_values), fuzz_target_value)],
        "profile": [("bytes", st.binary(max_size=300), fuzz_profile_bytes),
                    ("json values", st.lists(json_values, max_size=3), fuzz_profile_records),
                    ("mutated valid record", st.lists(mutated(record), min_size=1, max_size=3), fuzz_profile_records)],
        "manifest": [("text", st.text(), fuzz_manifest_text),
                     ("json values", json_values, fuzz_manifest_value),
                     ("mutated valid manifest", mutated(manifest), fuzz_manifest_value)],
    }


CASES = [(parser, what) for parser, entries in fuzz_targets().items() for what, _, _ in entries]
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("parser,what", [
    pytest.param(p, w, id=f"{p}-{w.replace(' ', '_')}",
                 marks=[pytest.mark.xfail(strict=True, reason="bug: " + KNOWN_BUGS[(p, w)])] if (p, w) in KNOWN_BUGS else [])
    for p, w in CASES])
def test_parser_raises_only_esta_errors(parser: str, what: str) -> None:
    entries = fuzz_targets()[parser]
    (strategy, target), = [(s, t) for w, s, t in entries if w == what]
    settings(SUITE, max_examples=EXAMPLES_PER_PARSER // len(entries))(given(strategy)(target))()


def test_seeds_are_valid() -> None:
    """The mutation seeds parse: otherwise the mutations would only test the first check."""
    from esta_export import targets as T
    from esta_export.bundle.manifest import check_manifest
    from esta_export.profiling.store import check_record
    from esta_export.supernet.spec import SupernetSpec

    SupernetSpec.from_json(valid_spec())
    T._check(T._build(T.Target, valid_target(), Path("cpu.toml"), prefix=""), Path("cpu.toml"))
    check_record(valid_record(), "seed")
    check_manifest(valid_manifest())
