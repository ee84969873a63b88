"""Validation tier 3: a compiled artifact against the fp32 ONNX reference on the same inputs.

The gate depends on the precision (thresholds come from the target, see
:class:`esta_export.targets.Thresholds`):

- fp32: close within ``fp32_max_rel_error`` of the logits' scale (max|out-ref| / max|ref|);
- fp16 / bf16: per-sample cosine similarity (worst sample) and top-1 agreement;
- int8: top-1 agreement, plus an accuracy-drop gate when labels are given (the drop needs
  labelled data: on random inputs only agreement can be measured).

Every measured figure is returned, whichever decides the gate, so reports can show them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ValidationError
from .targets import Thresholds


def compare(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Every agreement figure between ``out`` and ``ref`` logits of shape [N, classes]."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValidationError(f"artifact output shape {out.shape} differs from the reference "
                              f"{ref.shape}", metric="shape",
                              hint="the compiled graph is not the exported one; re-run compile --fresh")
    if not np.all(np.isfinite(out)):
        # No error figure exists for non-finite outputs: null, never a bare Infinity in JSON.
        return {"finite": False, "max_abs_error": None, "rel_error": None,
                "cosine_min": 0.0, "cosine_mean": 0.0, "top1_agreement": 0.0, "samples": len(ref)}
    diff = np.abs(out - ref)
    scale = float(np.max(np.abs(ref))) or 1.0
    num = np.sum(out * ref, axis=1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    m = {
        "finite": True,
        "samples": int(len(ref)),
        "max_abs_error": float(diff.max()),
        "rel_error": float(diff.max() / scale),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        m["accuracy"] = float(np.mean(out.argmax(1) == labels))
        m["reference_accuracy"] = float(np.mean(ref.argmax(1) == labels))
        m["accuracy_drop"] = m["reference_accuracy"] - m["accuracy"]
    return m


def gate(precision: str, measured: dict[str, Any], th: Thresholds) -> dict[str, Any]:
    """The tier-3 verdict: ``{"tier": 3, "metric", "value", "threshold", "passed", **measured}``.

    A precision may have two gates (fp16: cosine and top-1; int8 with labels: agreement and
    accuracy drop); the one reported as ``metric`` is the first that fails, else the main one.
    """
    if not measured.get("finite", True):
        checks = [("finite", 0.0, 1.0, False)]
    elif precision == "fp32":
        checks = [("rel_error", measured["rel_error"], th.fp32_max_rel_error,
                   measured["rel_error"] <= th.fp32_max_rel_error)]
    elif precision in ("fp16", "bf16"):
        min_cos = th.fp16_min_cosine if precision == "fp16" else th.bf16_min_cosine
        min_top1 = (th.fp16_min_top1_agreement if precision == "fp16"
                    else th.bf16_min_top1_agreement)
        checks = [("cosine_min", measured["cosine_min"], min_cos, measured["cosine_min"] >= min_cos),
                  ("top1_agreement", measured["top1_agreement"], min_top1,
                   measured["top1_agreement"] >= min_top1)]
    elif precision == "int8":
        checks = [("top1_agreement", measured["top1_agreement"], th.int8_min_top1_agreement,
                   measured["top1_agreement"] >= th.int8_min_top1_agreement)]
        if "accuracy_drop" in measured:
            checks.append(("accuracy_drop", measured["accuracy_drop"], th.max_accuracy_drop,
                           measured["accuracy_drop"] <= th.max_accuracy_drop))
    else:  # the target schema only lets known precisions through
        raise ValueError(f"unknown precision {precision!r}")
    failed = [c for c in checks if not c[3]]
    metric, value, threshold, passed = (failed or checks)[0]
    return {"tier": 3, "precision": precision, "metric": metric, "value": value,
            "threshold": threshold, "passed": not failed, **measured}


def validate(precision: str, out: np.ndarray, ref: np.ndarray, th: Thresholds,
             labels: np.ndarray | None = None) -> dict[str, Any]:
    """Compare and gate in one call (never raises on a failed gate: callers decide)."""
    return gate(precision, compare(out, ref, labels), th)


def describe_failure(v: dict[str, Any]) -> str:
    """One line for a failed gate, saying which metric, how far, which threshold."""
    if v["metric"] == "finite":
        return "outputs contain NaN or Inf"
    op = "<=" if v["metric"] in ("rel_error", "accuracy_drop") else ">="
    return (f"{v['precision']} validation failed: {v['metric']} = {v['value']:.6g}, "
            f"needs {op} {v['threshold']:.6g}")
