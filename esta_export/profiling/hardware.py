"""Where each target has really run: read from profile records, never from the target file.

A target file may say ``verified_on_hardware = "x86-64 CPU (tests run here)"``; that is a claim.
What a record says is a fact: the processor its fingerprint read and whether it is of the target's
device class (``esta_export.runtime.environment.hardware_match``). ``esta-export targets`` and the
report show the facts; a record for ``intel-cpu`` made on an AMD processor counts as a stand-in.
JSON and the standard library only, so listing targets stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..runtime.environment import hardware_match

MAX_BYTES = 64 << 20  # never read an unbounded file to print a table


def reference_profiles() -> list[Path]:
    """The reference profiles shipped with the source checkout (``profiles/*.jsonl``)."""
    d = Path(__file__).resolve().parents[2] / "profiles"
    return sorted(d.glob("*.jsonl")) if d.is_dir() else []


def _records(paths: Iterable[Path]) -> Iterable[dict[str, Any]]:
    for p in paths:
        try:
            if not p.is_file() or p.stat().st_size > MAX_BYTES:
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("target"), str):
                yield rec


def where_ran(targets: Iterable[Any], paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Per target name: ``{"records", "matching", "ran_on": [...], "stand_in_on": [...], "summary"}``."""
    by_name = {t.name: t for t in targets}
    out: dict[str, dict[str, Any]] = {n: {"records": 0, "matching": 0, "ran_on": set(),
                                          "stand_in_on": set(), "reasons": set()} for n in by_name}
    for rec in _records(paths):
        t = by_name.get(rec["target"])
        if t is None:
            continue
        hw = rec.get("hardware") if isinstance(rec.get("hardware"), dict) else \
            hardware_match(t.device, rec.get("env") or {})
        o = out[t.name]
        o["records"] += 1
        if hw.get("matches"):
            o["matching"] += 1
            o["ran_on"].add(str(hw.get("ran_on")))
        else:
            o["stand_in_on"].add(str(hw.get("ran_on")))
            o["reasons"].add(str(hw.get("reason")))
    for name, o in out.items():
        o["ran_on"], o["stand_in_on"], o["reasons"] = (sorted(o["ran_on"]), sorted(o["stand_in_on"]),
                                                       sorted(o["reasons"]))
        o["summary"] = summary(o, by_name[name])
    return out


def summary(o: dict[str, Any], target: Any) -> str:
    if o["ran_on"]:
        return "ran on " + "; ".join(o["ran_on"])
    if o["stand_in_on"]:
        return "stand-in only: " + "; ".join(o["stand_in_on"]) + f" ({'; '.join(o['reasons'])})"
    claim = getattr(target, "verified_on_hardware", False)
    return ("no profile records" + (f" (target file claims: {claim})" if isinstance(claim, str) else "")
            if claim else "not verified on hardware")
