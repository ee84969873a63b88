"""Is a TensorRT bundle's engine usable here? The one check the bundle runtime, its profiler and
``engine_status`` use before running engines.

An engine is usable when it is built (plan + build record), built from the bundle's graph, the
engine that was validated, validated with a passing verdict, built on this device (its key's
device fields equal :func:`.device.fingerprint` read now: same source at build and at check), and
this device is the one the bundle was made for (:func:`.device.expectation_problems`). File
checks come first, so a bundle without engines is refused without importing TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import EngineMismatchError
from ..integrity import resolve_inside, sha256_file
from .device import engine_key, expectation_problems, fingerprint, stale_fields

NOT_READY = ("engines not built or not valid on this device: run `python3 build_engines.py "
             "kit.json` first")


class EnginesNotReadyError(EngineMismatchError):
    """A TensorRT bundle's engines are missing, stale or not validated on this device."""


def kit_plans(root: Path, manifest: dict) -> dict[int, dict]:
    rel = ((manifest.get("target") or {}).get("tensorrt") or {}).get("kit") or "kit.json"
    path = resolve_inside(root, rel)
    if not path.is_file():
        raise EnginesNotReadyError(f"{NOT_READY} (no {rel} in the bundle)")
    try:
        plans = json.loads(path.read_text()).get("plans") or []
    except (ValueError, AttributeError):
        raise EnginesNotReadyError(f"{NOT_READY} ({rel} is not valid JSON)") from None
    return {int(p["id"]): p for p in plans if isinstance(p, dict) and "id" in p}


def file_problem(root: Path, sid: int, plan: dict | None) -> tuple[str | None, dict]:
    """What keeps stitch ``sid``'s engine from running, judged from files alone (no TensorRT)."""
    if plan is None:
        return f"stitch {sid}: no build plan in kit.json", {}
    engine = resolve_inside(root, plan["engine"])
    meta_path = engine.with_name(engine.name + ".json")
    if not engine.is_file() or not meta_path.is_file():
        return f"stitch {sid}: not built", {}
    try:
        meta = json.loads(meta_path.read_text())
        key = meta["key"]
        key["onnx_sha256"]
    except (ValueError, KeyError, TypeError):
        return f"stitch {sid}: unreadable build record {meta_path.name}", {}
    verdict = meta.get("validation") or {}
    if verdict.get("passed") is not True:
        what = "failed validation" if verdict.get("passed") is False else "not validated"
        if verdict.get("passed") is False and isinstance(verdict.get("value"), (int, float)):
            what += (f" ({verdict.get('metric')} = {verdict['value']:.6g}, threshold "
                     f"{verdict.get('threshold')})")
        elif verdict.get("reason"):
            what += f" ({verdict['reason']})"
        return f"stitch {sid}: {what}", {}
    onnx = resolve_inside(root, plan["onnx"])
    if not onnx.is_file() or sha256_file(onnx) != key.get("onnx_sha256"):
        return f"stitch {sid}: built from another graph than {plan['onnx']}", {}
    if verdict.get("engine_sha256") and sha256_file(engine) != verdict["engine_sha256"]:
        return f"stitch {sid}: {engine.name} is not the engine that was validated", {}
    return None, {"plan": plan, "engine": engine, "meta": meta, "onnx_sha256": key["onnx_sha256"]}


def device_problem(sid: int, info: dict, expected: dict | None, fp: dict) -> str | None:
    """Why a built, validated engine does not belong on this device (None: it does)."""
    stale = stale_fields(info["meta"]["key"], engine_key(info["plan"], info["onnx_sha256"], fp))
    if stale:
        return f"stitch {sid}: built for another setup (differs in: {', '.join(stale)})"
    problems = expectation_problems(expected, fp)
    return f"stitch {sid}: {problems[0]}" if problems else None


def engine_problems(root: str | Path, manifest: dict, ids, *,
                    fp: dict | None = None) -> tuple[dict[int, dict], dict[int, str]]:
    """``(ready, problems)``: ``{id: {"plan", "engine", "meta"}}`` for usable engines, ``{id:
    one line}`` for the others, those found from files alone first. ``fp`` is this device (read
    when needed, after the file checks)."""
    root = Path(root)
    plans = kit_plans(root, manifest)
    expected = (manifest.get("target") or {}).get("tensorrt")
    ready, problems = {}, {}
    for sid in ids:
        problem, info = file_problem(root, int(sid), plans.get(int(sid)))
        if problem:
            problems[int(sid)] = problem
        else:
            ready[int(sid)] = info
    if ready:
        if fp is None:
            try:
                fp = fingerprint()
            except ImportError as err:
                why = f"TensorRT's Python bindings are not importable here: {err}"
                return {}, {**problems, **{sid: why for sid in ready}}
        for sid in list(ready):
            problem = device_problem(sid, ready[sid], expected, fp)
            if problem:
                problems[sid] = problem
                del ready[sid]
    return ready, problems


def ready_engines(root: str | Path, manifest: dict, ids, *,
                  fingerprint: dict | None = None) -> dict[int, dict]:
    """Every engine of ``ids`` when all are usable here; else :class:`EnginesNotReadyError` (one
    line: :data:`NOT_READY` and the first problem)."""
    ready, problems = engine_problems(root, manifest, ids, fp=fingerprint)
    if problems:
        first = next(iter(problems.values()))  # file problems first: they need no TensorRT
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise EnginesNotReadyError(f"{NOT_READY} ({first}{more})")
    return ready
