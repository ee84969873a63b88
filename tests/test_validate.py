"""Tier-3 validation gates, per precision."""

from __future__ import annotations

import numpy as np
import pytest

from esta_export.errors import ValidationError
from esta_export.targets import Thresholds
from esta_export.validate import compare, describe_failure, validate

TH = Thresholds()


def _ref(n=200, c=10, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32) * 3


def test_fp32_close_and_not_close():
    ref = _ref()
    ok = validate("fp32", ref + 1e-6, ref, TH)
    assert ok["passed"] and ok["metric"] == "rel_error" and ok["value"] < 1e-4
    bad = validate("fp32", ref * 1.01, ref, TH)
    assert not bad["passed"] and bad["value"] > TH.fp32_max_rel_error
    assert "rel_error" in describe_failure(bad) and "<= 0.0001" in describe_failure(bad)


def test_fp16_cosine_and_top1():
    ref = _ref()
    noisy = ref + np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32) * 1e-3
    v = validate("fp16", noisy, ref, TH)
    assert v["passed"] and v["cosine_min"] > 0.999 and v["top1_agreement"] == 1.0
    shuffled = ref[:, ::-1].copy()
    v = validate("fp16", shuffled, ref, TH)
    assert not v["passed"] and v["metric"] == "cosine_min"


def test_int8_top1_and_accuracy_drop():
    ref = _ref()
    labels = ref.argmax(1)
    out = ref.copy()
    flip = np.arange(len(out)) < 10            # 5% of samples lose their top-1
    out[flip] = -out[flip]
    v = validate("int8", out, ref, TH)
    assert v["passed"] and v["top1_agreement"] == pytest.approx(0.95)
    assert "accuracy_drop" not in v             # no labels: no drop measured
    v = validate("int8", out, ref, TH, labels=labels)
    assert not v["passed"] and v["metric"] == "accuracy_drop"
    assert v["accuracy_drop"] == pytest.approx(0.05) and v["reference_accuracy"] == 1.0


def test_nan_and_shape():
    ref = _ref(4)
    out = ref.copy()
    out[0, 0] = np.nan
    v = validate("fp16", out, ref, TH)
    assert not v["passed"] and describe_failure(v) == "outputs contain NaN or Inf"
    with pytest.raises(ValidationError, match="shape"):
        compare(ref[:2], ref)


def test_thresholds_come_from_the_target():
    ref = _ref()
    out = ref * 1.001
    assert not validate("fp32", out, ref, TH)["passed"]
    assert validate("fp32", out, ref, Thresholds(fp32_max_rel_error=1e-2))["passed"]
