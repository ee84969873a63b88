"""Validation tier 3: a compiled artifact against the fp32 ONNX reference on the same inputs.

The gate depends on the precision (thresholds come from the target, see
:class:`esta_export.targets.Thresholds`):

- fp32: close within ``fp32_max_rel_error`` of the logits' scale (max|out-ref| / max|ref|);
- fp16 / bf16: per-sample cosine similarity (worst sample) and top-1 agreement;
- int8: top-1 agreement, plus an accuracy-drop gate when labels are given (the drop needs
  labelled data: on random inputs only agreement can be measured).

Every measured figure is returned, whichever decides the gate, so reports can show them. The
arithmetic is :mod:`esta_export.runtime.gates` (the same code validates engines on the device);
this module adapts it to the host's typed thresholds and errors.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from .errors import ValidationError
from .runtime import gates
from .targets import Thresholds


def compare(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Every agreement figure between ``out`` and ``ref`` logits of shape [N, classes]."""
    m = gates.compare_logits(out, ref, labels)
    if "reference_shape" in m:
        raise ValidationError(f"artifact output shape {tuple(m['shape'])} differs from the reference "
                              f"{tuple(m['reference_shape'])}", metric="shape",
                              hint="the compiled graph is not the exported one; re-run compile --fresh")
    return m


def gate(precision: str, measured: dict[str, Any], th: Thresholds) -> dict[str, Any]:
    """The tier-3 verdict (:func:`esta_export.runtime.gates.gate` with the target's thresholds)."""
    return gates.gate(precision, measured, asdict(th))


def validate(precision: str, out: np.ndarray, ref: np.ndarray, th: Thresholds,
             labels: np.ndarray | None = None) -> dict[str, Any]:
    """Compare and gate in one call (never raises on a failed gate: callers decide)."""
    return gate(precision, compare(out, ref, labels), th)


describe_failure = gates.describe_failure
