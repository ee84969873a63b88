"""runtime/device_files.py: the device loop's pruning of its work folder, on a real file tree
(and run as the host runs it: its text through ``python -c``, the plan on standard input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esta_export.runtime import device_files
from esta_export.runtime.device_files import MARKER, Refused, prune


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def _run(root: Path, plan: dict, key: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", Path(device_files.__file__).read_text(), "--root", str(root),
                           "--key", key], input=json.dumps(plan), capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]})


def test_removes_what_the_plan_no_longer_ships_and_nothing_outside(tmp_path):
    root, outside = tmp_path / "work", tmp_path / "precious.txt"
    outside.write_text("keep me")
    keep = ["bundle/manifest.json", "bundle/models/stitch_000.onnx", "reference.npz"]
    _tree(root, keep + ["bundle/engines/stitch_000.plan"])
    first = _run(root, {"keep": keep, "outputs": ["bundle/engines"]}, "k1")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"removed": [], "outputs_cleared": False}
    assert json.loads((root / MARKER).read_text()) == {"key": "k1"}

    # stitch 1 dropped from the plan, a stale file of an older compile, a link out of the folder
    _tree(root, ["bundle/models/stitch_001.onnx", "bundle/models/old/stitch_009.onnx"])
    (root / "bundle" / "link.txt").symlink_to(outside)
    (root / "bundle" / "linkdir").symlink_to(tmp_path)
    (root / ".steps").mkdir()
    (root / ".steps" / "profile-aaaa.out").write_text("{}")
    (root / "bundle" / "esta_runtime" / "__pycache__").mkdir(parents=True)
    (root / "bundle" / "esta_runtime" / "__pycache__" / "x.pyc").write_text("")
    same = _run(root, {"keep": keep, "outputs": ["bundle/engines"]}, "k1")
    assert same.returncode == 0, same.stderr
    assert sorted(json.loads(same.stdout)["removed"]) == [
        "bundle/link.txt", "bundle/linkdir", "bundle/models/old/stitch_009.onnx", "bundle/models/stitch_001.onnx"]
    assert outside.read_text() == "keep me" and tmp_path.is_dir()  # links removed, never their targets
    assert not (root / "bundle" / "models" / "old").exists()     # emptied folder gone
    assert all((root / k).is_file() for k in keep)
    assert (root / "bundle" / "engines" / "stitch_000.plan").is_file()  # same key: outputs stay
    assert (root / ".steps" / "profile-aaaa.out").is_file()
    assert (root / "bundle" / "esta_runtime" / "__pycache__" / "x.pyc").is_file()

    # new shipped files (another key): what the steps made from the old ones goes too
    changed = _run(root, {"keep": keep, "outputs": ["bundle/engines"]}, "k2")
    assert changed.returncode == 0, changed.stderr
    res = json.loads(changed.stdout)
    assert res["outputs_cleared"] and "bundle/engines/stitch_000.plan" in res["removed"]
    assert not (root / "bundle" / "engines").exists() and not (root / ".steps" / "profile-aaaa.out").exists()
    assert all((root / k).is_file() for k in keep) and outside.read_text() == "keep me"


@pytest.mark.parametrize("bad", ["../precious.txt", "/etc/passwd", "bundle/../../precious.txt", "out/x"])
def test_a_path_leaving_the_folder_is_refused_and_nothing_removed(tmp_path, bad):
    root = tmp_path / "work"
    _tree(root, ["a.txt", "stale.txt"])
    (root / MARKER).write_text(json.dumps({"key": "k"}))
    (root / "out").symlink_to(tmp_path)  # a folder link out: "out/x" resolves outside
    (tmp_path / "precious.txt").write_text("keep me")
    r = _run(root, {"keep": ["a.txt", bad], "outputs": []}, "k")
    assert r.returncode == 2 and "nothing removed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (root / "stale.txt").is_file() and (tmp_path / "precious.txt").is_file() and (root / "out").is_symlink()
    with pytest.raises(Refused):
        prune(root, ["a.txt"], [bad], "k")


def test_a_folder_esta_export_did_not_make_is_left_alone(tmp_path):
    home = tmp_path / "home"
    _tree(home, ["notes.txt", "src/main.c"])
    r = _run(home, {"keep": ["bundle/manifest.json"], "outputs": []}, "k")
    assert r.returncode == 3 and "did not put there" in r.stderr
    assert (home / "notes.txt").is_file() and (home / "src" / "main.c").is_file() and not (home / MARKER).exists()
    bad = subprocess.run([sys.executable, "-c", Path(device_files.__file__).read_text(), "--root", str(home),
                          "--key", "k"], input="not json", capture_output=True, text=True)
    assert bad.returncode == 2 and "unreadable plan" in bad.stderr
