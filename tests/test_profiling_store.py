"""Profile store: append-only JSON lines, locking across processes, torn lines, versions."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from esta_export.errors import ProfileError
from esta_export.profiling.store import SCHEMA, ProfileStore, ProfileStoreWarning


def rec(i: int, sha: str = "a", env: str = "e", settings: str = "s", **kw) -> dict:
    return {"stitch_id": i, "route": f"R{i}", "artifact_sha256": sha, "env_hash": env,
            "settings_hash": settings, "target": "cpu", "batch": 1,
            "latency_ms": {"median": float(i + 1)}, "unstable": False, "measured": True, **kw}


def _writer(path: str, start: int, n: int) -> None:
    store = ProfileStore(path)
    for i in range(start, start + n):
        # Big records make interleaved bytes likely if the lock did not work.
        store.append([rec(i, sha=f"s{i}", pad="x" * 20000)])


def test_append_lookup_and_cache_key(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p" / "cpu.jsonl")
    assert store.records() == [] and store.lookup("a", "e", "s") is None
    assert store.append([rec(1), rec(2, sha="b")]) == 2
    store.append([rec(3)])  # a newer record for the same artifact
    recs = store.records()
    assert [r["stitch_id"] for r in recs] == [1, 2, 3]
    assert all(r["schema"] == SCHEMA and r["schema_version"] == "1.0" and r["time"] for r in recs)
    assert store.lookup("a", "e", "s")["stitch_id"] == 3
    assert store.lookup("a", "other-env", "s") is None
    assert store.lookup("a", "e", "other-settings") is None


def test_torn_last_line_is_skipped_with_warning_and_next_append_survives(tmp_path: Path) -> None:
    path = tmp_path / "cpu.jsonl"
    store = ProfileStore(path)
    store.append([rec(1)])
    full = json.dumps({"schema": SCHEMA, "schema_version": "1.0", **rec(2)})
    with open(path, "a") as f:
        f.write(full[: len(full) // 2])  # a crash in the middle of a write
    with pytest.warns(ProfileStoreWarning, match="torn last line"):
        assert [r["stitch_id"] for r in ProfileStore(path).records()] == [1]
    store.append([rec(3)])
    with pytest.warns(ProfileStoreWarning, match="corrupt line"):
        assert [r["stitch_id"] for r in ProfileStore(path).records()] == [1, 3]


def test_newer_major_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cpu.jsonl"
    path.write_text(json.dumps({"schema": SCHEMA, "schema_version": "2.0", **rec(1)}) + "\n")
    with pytest.raises(ProfileError, match="newer than this esta-export reads"):
        ProfileStore(path).records()
    path.write_text(json.dumps({"schema": SCHEMA, "schema_version": "1.7", **rec(1)}) + "\n")
    assert len(ProfileStore(path).records()) == 1  # a newer minor version is fine
    path.write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(ProfileError, match="not an esta-export profile record"):
        ProfileStore(path).records()


def test_two_processes_appending_never_corrupt_the_store(tmp_path: Path) -> None:
    path = tmp_path / "cpu.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), k * 100, 15)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 30
    ids = sorted(json.loads(line)["stitch_id"] for line in lines)  # every line parses
    assert ids == list(range(15)) + list(range(100, 115))


def test_store_path_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="is a folder"):
        ProfileStore(tmp_path).records()
