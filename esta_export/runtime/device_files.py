"""Keep the device loop's work folder holding only what the current plan shipped.

``python3 device_files.py --root ROOT --key KEY < plan.json`` (the host streams this file's text
with ``python3 -c``, so it runs before anything else is on the device), where ``plan.json`` is
``{"keep": [paths the host ships], "outputs": [paths the device steps write]}``, all relative to
ROOT, the device's esta-export work folder:

- every listed path is checked first: absolute, ``..`` or resolving outside ROOT (a symlink) is
  refused (exit 2, one line) and nothing is removed;
- a folder without the marker ``ROOT/.esta-work`` that holds files the plan does not name was not
  made by esta-export (a home folder given as --device-dir by mistake): refused (exit 3), nothing
  removed;
- else every file (or link: the link itself, never its target) under ROOT that the plan does not
  keep is removed, outputs aside; when KEY (what the shipped files hash to) differs from the one
  the marker recorded, the outputs (engines built from other files) and the step results of
  ``.steps`` go too, so nothing made from other files is picked up again. Empty folders left
  behind are removed. Nothing outside ROOT is ever touched.

Prints ``{"removed": [...], "outputs_cleared": bool}``. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

MARKER = ".esta-work"
STEPS = ".steps"
STEP_RESULTS = (".out", ".part", ".rc")


class Refused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _inside(root: Path, rel: str) -> str:
    """``rel`` normalised, or Refused when it leaves ``root``."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        raise Refused(f"path {rel!r} leaves the work folder {root}; nothing removed", 2)
    try:
        (root / rel).resolve().relative_to(root.resolve())
    except ValueError:
        raise Refused(f"path {rel!r} resolves outside the work folder {root} (a symlink?); nothing removed",
                      2) from None
    return Path(rel).as_posix()


def _entries(root: Path) -> list[str]:
    """Files and links under ``root`` (not following links), dot-folders and the marker aside."""
    out = []
    for dp, dn, fn in os.walk(root, followlinks=False):
        rel_dir = Path(dp).relative_to(root)
        keep_dirs = []
        for d in dn:
            if d == "__pycache__" or (d.startswith(".") and rel_dir == Path(".")):
                continue  # the device's own Python caches, the step results (.steps): not shipped files
            if os.path.islink(os.path.join(dp, d)):
                out.append((rel_dir / d).as_posix())  # a link to a folder: an entry, never entered
            else:
                keep_dirs.append(d)
        dn[:] = keep_dirs
        out += [(rel_dir / f).as_posix() for f in fn if not (rel_dir == Path(".") and f == MARKER)]
    return sorted(out)


def _under(rel: str, prefixes: list[str]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def _remove(root: Path, rel: str) -> None:
    path = root / rel
    # the folder holding it must still be inside ROOT (a link swapped in meanwhile is not followed)
    path.parent.resolve().relative_to(root.resolve())
    os.unlink(path)


def prune(root: Path, keep: list[str], outputs: list[str], key: str) -> dict:
    root = Path(root)
    keep_set = {_inside(root, k) for k in keep}
    outs = [_inside(root, o) for o in outputs]
    if not root.is_dir():
        return {"removed": [], "outputs_cleared": False}
    marker = root / MARKER
    present = _entries(root)
    if not marker.is_file():
        foreign = [p for p in present if p not in keep_set and not _under(p, outs)]
        if foreign:
            raise Refused(f"{root} holds {len(foreign)} files esta-export did not put there (e.g. {foreign[0]}); "
                          "nothing removed", 3)
        old_key = None
    else:
        try:
            old_key = json.loads(marker.read_text()).get("key")
        except (OSError, ValueError, AttributeError):
            old_key = None
    cleared = old_key is not None and old_key != key
    removed = [p for p in present if p not in keep_set and (cleared or not _under(p, outs))]
    for rel in removed:
        try:
            _remove(root, rel)
        except ValueError:
            raise Refused(f"the folder holding {rel!r} now resolves outside the work folder {root}; stopped", 2) from None
    steps = root / STEPS
    if cleared and steps.is_dir() and not steps.is_symlink():
        for f in sorted(steps.iterdir()):
            if f.is_file() and not f.is_symlink() and f.name.endswith(STEP_RESULTS):
                f.unlink()
                removed.append(f"{STEPS}/{f.name}")
    for dp, _, _ in os.walk(root, topdown=False, followlinks=False):  # deepest first
        if Path(dp) != root and not os.listdir(dp):
            os.rmdir(dp)
    tmp = marker.with_name(MARKER + ".tmp")
    tmp.write_text(json.dumps({"key": key}))
    os.replace(tmp, marker)
    return {"removed": removed, "outputs_cleared": cleared}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="device_files")
    p.add_argument("--root", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args(argv)
    try:
        plan = json.loads(sys.stdin.read())
        result = prune(Path(args.root), list(plan.get("keep", [])), list(plan.get("outputs", [])), args.key)
    except Refused as err:
        print(f"device_files: {err}", file=sys.stderr)
        return err.code
    except (ValueError, AttributeError) as err:
        print(f"device_files: unreadable plan on standard input ({err})", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
