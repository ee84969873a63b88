"""Validation tier 3, the one gate arithmetic: a compiled artifact's logits against the fp32 reference.

Plain numpy, so it runs on the device (the bundle's TensorRT engine validation, the runtime's
re-validation after a refit) exactly as on the host (``esta_export.validate`` is a thin adapter
over this module). Thresholds are a plain mapping with the keys of
``esta_export.targets.Thresholds``; missing keys take :data:`DEFAULT_THRESHOLDS`.

- fp32: close within ``fp32_max_rel_error`` of the logits' scale (max|out-ref| / max|ref|);
- fp16 / bf16: per-sample cosine similarity (worst sample) and top-1 agreement;
- int8: top-1 agreement, plus an accuracy-drop gate when labels are given.

Every measured figure is returned, whichever decides the gate, so reports can show them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# esta_export.targets.Thresholds defaults (a test keeps the two equal); a target overrides them.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "fp32_max_rel_error": 1e-4, "fp16_min_cosine": 0.999, "fp16_min_top1_agreement": 0.98,
    "bf16_min_cosine": 0.99, "bf16_min_top1_agreement": 0.95, "int8_min_top1_agreement": 0.90,
    "max_accuracy_drop": 0.01,
}


def compare_logits(out, ref, labels=None) -> dict[str, Any]:
    """Every agreement figure between ``out`` and ``ref`` logits [N, classes].

    A shape mismatch is reported (``shape``/``reference_shape``), not raised: the gate turns it
    into a failed verdict, so a device never crashes on a bad engine.
    """
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return {"finite": True, "shape": list(out.shape), "reference_shape": list(ref.shape),
                "samples": int(len(ref))}
    if not np.all(np.isfinite(out)):
        # No error figure exists for non-finite outputs: null, never a bare Infinity in JSON.
        return {"finite": False, "max_abs_error": None, "rel_error": None,
                "cosine_min": 0.0, "cosine_mean": 0.0, "top1_agreement": 0.0, "samples": len(ref)}
    diff = np.abs(out - ref)
    scale = float(np.max(np.abs(ref))) or 1.0
    num = np.sum(out * ref, axis=1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    m = {"finite": True, "samples": int(len(ref)), "max_abs_error": float(diff.max()),
         "rel_error": float(diff.max() / scale), "cosine_min": float(cos.min()),
         "cosine_mean": float(cos.mean()),
         "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        m["accuracy"] = float(np.mean(out.argmax(1) == labels))
        m["reference_accuracy"] = float(np.mean(ref.argmax(1) == labels))
        m["accuracy_drop"] = m["reference_accuracy"] - m["accuracy"]
    return m


def gate(precision: str, measured: dict[str, Any],
         thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The tier-3 verdict: ``{"tier": 3, "metric", "value", "threshold", "passed", **measured}``.

    A precision may have two gates (fp16: cosine and top-1; int8 with labels: agreement and
    accuracy drop); the one reported as ``metric`` is the first that fails, else the main one.
    """
    th = dict(DEFAULT_THRESHOLDS, **(thresholds or {}))
    if "reference_shape" in measured:
        checks = [("shape", 0.0, 1.0, False)]
    elif not measured.get("finite", True):
        checks = [("finite", 0.0, 1.0, False)]
    elif precision == "fp32":
        checks = [("rel_error", measured["rel_error"], th["fp32_max_rel_error"],
                   measured["rel_error"] <= th["fp32_max_rel_error"])]
    elif precision in ("fp16", "bf16"):
        min_cos = th[f"{precision}_min_cosine"]
        min_top1 = th[f"{precision}_min_top1_agreement"]
        checks = [("cosine_min", measured["cosine_min"], min_cos, measured["cosine_min"] >= min_cos),
                  ("top1_agreement", measured["top1_agreement"], min_top1,
                   measured["top1_agreement"] >= min_top1)]
    elif precision == "int8":
        checks = [("top1_agreement", measured["top1_agreement"], th["int8_min_top1_agreement"],
                   measured["top1_agreement"] >= th["int8_min_top1_agreement"])]
        if "accuracy_drop" in measured:
            checks.append(("accuracy_drop", measured["accuracy_drop"], th["max_accuracy_drop"],
                           measured["accuracy_drop"] <= th["max_accuracy_drop"]))
    else:  # the target schema only lets known precisions through
        raise ValueError(f"unknown precision {precision!r}")
    failed = [c for c in checks if not c[3]]
    metric, value, threshold, _ = (failed or checks)[0]
    return {"tier": 3, "precision": precision, "metric": metric, "value": value,
            "threshold": threshold, "passed": not failed, **measured}


def describe_failure(v: dict[str, Any]) -> str:
    """One line for a failed or missing verdict: which metric, how far, which threshold."""
    if v.get("passed") is None:
        return f"not validated: {v.get('reason', 'no verdict')}"
    if v.get("metric") == "finite":
        return "outputs contain NaN or Inf"
    if v.get("metric") == "shape":
        return f"output shape {v.get('shape')} differs from the reference {v.get('reference_shape')}"
    if not isinstance(v.get("value"), (int, float)):
        return f"{v.get('precision')} validation failed: {v.get('reason') or v.get('metric')}"
    op = "<=" if v["metric"] in ("rel_error", "accuracy_drop") else ">="
    return (f"{v['precision']} validation failed: {v['metric']} = {v['value']:.6g}, "
            f"needs {op} {v['threshold']:.6g}")
