"""On-device validation of TensorRT engines: run each on the shipped reference inputs and gate it
against the fp32 logits with the target's thresholds (:mod:`esta_runtime.gates`, the same gate the
host uses). TensorRT builds are not deterministic, so this runs after every build, on ``--check``,
and after every refit of a weight-stripped engine.

``reference.npz`` holds ``x`` (inputs), optional labels ``y`` and ``ref_<id>`` (fp32 logits).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..gates import DEFAULT_THRESHOLDS, compare_logits, gate
from ..integrity import resolve_inside, sha256_file
from .build import atomic_write
from .runner import TrtRunner, deserialize, infer_in_chunks, max_batch

VALIDATION = "validation.json"
REFERENCE = "reference.npz"


def load_reference(root: Path, kit: dict) -> dict | None:
    """The fp32 reference the kit names (or ``reference.npz`` next to kit.json); None if none."""
    import numpy as np

    path = Path(root) / (kit.get("reference") or REFERENCE)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "x" not in arrays:
        return None
    return {"path": path.name, "sha256": sha256_file(path), "x": arrays["x"].astype(np.float32),
            "y": arrays.get("y"),
            "refs": {int(k[4:]): v for k, v in arrays.items() if k.startswith("ref_") and k[4:].isdigit()}}


def kit_thresholds(root: Path, kit: dict) -> tuple[dict, str]:
    """The target's gates: kit.json's ``thresholds``, else compile.json's target (the compile
    folder's kit), else the defaults; and where they came from."""
    if isinstance(kit.get("thresholds"), dict):
        return dict(DEFAULT_THRESHOLDS, **kit["thresholds"]), "kit.json"
    compiled = Path(root) / "compile.json"
    if compiled.is_file():
        try:
            th = (json.loads(compiled.read_text()).get("target_spec") or {}).get("validation")
        except ValueError:
            th = None
        if isinstance(th, dict):
            return dict(DEFAULT_THRESHOLDS, **th), "compile.json target"
    return dict(DEFAULT_THRESHOLDS), "esta-export defaults"


def shared_weights(root: Path, plan: dict) -> tuple[dict | None, Path | None]:
    """The bundle's weights index and file a plan names (``shared_weights``), for named refit."""
    sw = plan.get("shared_weights") or {}
    if not sw.get("index") or not sw.get("file"):
        return None, None
    index_path = resolve_inside(Path(root), sw["index"])
    if not index_path.is_file():
        return None, None
    return json.loads(index_path.read_text()), resolve_inside(Path(root), sw["file"])


def open_engine(root: Path, plan: dict, meta: dict) -> tuple[TrtRunner, str | None]:
    """Deserialize an engine and, when it was built weight-stripped, refit it from the shared
    weights first; returns the runner and how it was refitted (None for a full engine)."""
    root = Path(root)
    held = deserialize(resolve_inside(root, plan["engine"]))
    how = None
    if meta.get("weights") == "stripped":
        from .refit import refit

        index, data = shared_weights(root, plan)
        how = refit(held, resolve_inside(root, plan["onnx"]), index=index, data_path=data,
                    stitch_id=plan.get("id"))
    return TrtRunner(held), how


def validate_engine(plan: dict, root: Path, reference: dict | None, thresholds: dict,
                    meta: dict | None = None) -> dict:
    """Run the built engine (refitted first when stripped) on the reference inputs and gate it.

    Never raises for a bad engine: a failure to run or refit is a failed verdict with its reason.
    A missing reference (or cuda-python) gives ``passed: None`` (not validated, so not usable).
    """
    root = Path(root)
    engine_path = root / plan["engine"]
    meta = meta or {}
    base = {"tier": 3, "precision": plan["precision"], "thresholds": thresholds,
            "engine_sha256": sha256_file(engine_path), "weights": meta.get("weights", "full"),
            "validated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ref = None if reference is None else reference["refs"].get(int(plan.get("id", -1)))
    if ref is None:
        return {**base, "passed": None,
                "reason": f"no fp32 reference logits for stitch {plan.get('id')} ({REFERENCE})"}
    base.update(reference={"path": reference["path"], "sha256": reference["sha256"],
                           "samples": int(len(reference["x"]))})
    try:
        runner, how = open_engine(root, plan, meta)
    except ImportError as err:
        return {**base, "passed": None,
                "reason": f"cannot run engines: {err} (pip install cuda-python numpy)"}
    except RuntimeError as err:  # RefitError is one
        return {**base, "passed": False, "metric": "run", "reason": str(err)}
    if how:
        base["refit"] = how
    try:
        import tensorrt as trt

        base["runtime"] = f"tensorrt {trt.__version__}"
        out = infer_in_chunks(runner, reference["x"], max_batch(plan))
    except RuntimeError as err:
        return {**base, "passed": False, "metric": "run", "reason": f"inference failed: {err}"}
    finally:
        runner.close()
    return {**base, **gate(plan["precision"], compare_logits(out, ref, reference.get("y")),
                           thresholds)}


def record_validation(engine: Path, verdict: dict) -> None:
    """Put the verdict into the engine's build record (``.plan.json``), atomically."""
    meta_path = Path(str(engine) + ".json")
    meta = json.loads(meta_path.read_text())
    meta["validation"] = verdict
    atomic_write(meta_path, json.dumps(meta, indent=2).encode())
