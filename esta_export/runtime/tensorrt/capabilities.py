"""What each TensorRT release can do: the one capability table, read by the host (build plans) and
by the device (engine build, refit at load). No TensorRT import here.

One row per release whose behaviour differs; a version uses the newest row <= it. Every
TensorRT name a row gates off is listed in :data:`GUARDED_NAMES`, and
``tests/test_tensorrt_api.py`` checks the code's TensorRT names against the real bindings of each
row's release (PyPI's ``tensorrt-bindings`` / ``tensorrt-cu12-bindings`` wheels).
"""

from __future__ import annotations

from typing import Any

_BASE_10: dict[str, Any] = {
    "explicit_batch_flag": False, "builder_optimization_level": True, "strongly_typed": True,
    # Weight-stripped plans refitted with identical weights (BuilderFlag.STRIP_PLAN +
    # REFIT_IDENTICAL) and the ONNX parser's refitter: from 10.0.
    "strip_plan": True, "refit_identical": True, "onnx_parser_refitter": True,
    "weight_streaming": True, "int8_calibrator": "supported", "layernorm_op": True,
    "max_opset": 20, "execute_async_v3": True, "build_engine_api": False,
}
CAPABILITIES: dict[tuple[int, int], dict[str, Any]] = {
    (8, 5): {"explicit_batch_flag": True, "builder_optimization_level": False,
             "strongly_typed": False, "strip_plan": False, "refit_identical": False,
             "onnx_parser_refitter": False, "weight_streaming": False,
             "int8_calibrator": "supported", "layernorm_op": False, "max_opset": 16,
             "execute_async_v3": True, "build_engine_api": True},
    (8, 6): {"explicit_batch_flag": True, "builder_optimization_level": True,
             "strongly_typed": False, "strip_plan": False, "refit_identical": False,
             "onnx_parser_refitter": False, "weight_streaming": False,
             "int8_calibrator": "supported", "layernorm_op": True, "max_opset": 17,
             "execute_async_v3": True, "build_engine_api": True},
    (10, 0): dict(_BASE_10),
    (10, 1): dict(_BASE_10, int8_calibrator="deprecated"),
}

# TensorRT names that exist only where a capability is true: code may use them only where it has
# checked that capability (tests/test_tensorrt_api.py enforces both halves).
GUARDED_NAMES: dict[str, tuple[str, ...]] = {
    "strip_plan": ("STRIP_PLAN",),
    "refit_identical": ("REFIT_IDENTICAL",),
    "onnx_parser_refitter": ("OnnxParserRefitter", "refit_from_file"),
}

# The PyPI bindings each row is checked against. JetPack 5's TensorRT 8.5 has no PyPI bindings:
# 8.6.1 is the nearest release published there.
CHECKED_BINDINGS: dict[tuple[int, int], str] = {
    (8, 5): "8.6.1", (8, 6): "8.6.1", (10, 0): "10.0.1", (10, 1): "10.1.0",
}


class UnsupportedTensorRT(ValueError):
    """A TensorRT release older than the table's first row."""


def version_tuple(version: str) -> tuple[int, int]:
    parts = str(version).lstrip(">=~ ").split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        raise UnsupportedTensorRT(f"TensorRT version {version!r} is not a version number") from None


def capabilities(version: str) -> dict[str, Any]:
    """The row that applies to ``version`` ("10.3", "10.3.0.30", ">=10.0")."""
    v = version_tuple(version)
    keys = [k for k in sorted(CAPABILITIES) if k <= v]
    if not keys:
        raise UnsupportedTensorRT(f"TensorRT {version} is older than 8.5")
    return dict(CAPABILITIES[keys[-1]])
