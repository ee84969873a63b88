"""Open a ready engine for the bundle runtime; a weight-stripped one is refitted from the
bundle's shared weights and re-validated against the shipped reference before its first use.

A refit that fails, or a refitted engine that misses the target's gates, is refused with one line
(``EnginesNotReadyError``): it never runs. NOT verified on hardware.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..gates import compare_logits, describe_failure, gate
from .check import NOT_READY, EnginesNotReadyError
from .runner import EngineSession, infer_in_chunks, max_batch
from .validation import kit_thresholds, load_reference, open_engine


def _kit(root: Path) -> dict:
    path = Path(root) / "kit.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def revalidate(root: Path, ready: dict, runner) -> dict:
    """Gate a freshly refitted engine on the bundle's reference (the verdict; never raises)."""
    kit = _kit(root)
    reference = load_reference(root, kit)
    sid = int(ready["plan"].get("id", -1))
    if reference is None or sid not in reference["refs"]:
        return {"passed": None, "reason": f"no fp32 reference logits for stitch {sid} to re-validate "
                                          f"the refitted engine"}
    thresholds, _ = kit_thresholds(root, kit)
    out = infer_in_chunks(runner, reference["x"], max_batch(ready["plan"]))
    return gate(ready["plan"]["precision"], compare_logits(out, reference["refs"][sid],
                                                           reference.get("y")), thresholds)


def open_session(root: Path, ready: dict) -> EngineSession:
    sid = ready["plan"].get("id")
    try:
        runner, how = open_engine(root, ready["plan"], ready["meta"])
    except RuntimeError as err:
        raise EnginesNotReadyError(f"{NOT_READY} (stitch {sid}: {err})") from None
    if how is not None:
        verdict = revalidate(root, ready, runner)
        if verdict.get("passed") is not True:
            runner.close()
            raise EnginesNotReadyError(f"{NOT_READY} (stitch {sid}: refitted engine "
                                       f"{describe_failure(verdict)})")
        ready = dict(ready, refit={"how": how, "verdict": {k: verdict.get(k) for k in (
            "metric", "value", "threshold", "passed")}})
    return EngineSession(ready, runner)
