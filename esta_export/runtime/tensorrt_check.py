"""Refuse a TensorRT plan that was built for another TensorRT version or GPU.

TensorRT engines are not portable: a plan runs only with the TensorRT build that made it, on the
same GPU model. The bundle's build kit writes ``<plan>.json`` next to each plan with what it was
built with; the manifest records what the bundle expects. Before deserializing a plan the runtime
compares both with what it finds on this device, so a mismatch is a clear error, not a crash.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .errors import EngineMismatchError


def _version_key(version: str | None, parts: int = 3) -> tuple:
    return tuple(str(version or "").split(".")[:parts])


def found_environment() -> dict:
    """TensorRT version and GPU name on this machine (None where they cannot be read)."""
    found: dict = {"tensorrt_version": None, "gpu": None}
    try:
        import tensorrt  # noqa: F401 - only on devices that run plans

        found["tensorrt_version"] = tensorrt.__version__
    except ImportError:
        pass
    model = Path("/proc/device-tree/model")  # Jetson: the SoC name, no nvidia-smi there
    if model.is_file():
        found["gpu"] = model.read_text(errors="replace").strip("\x00\n ")
    else:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True)
            found["gpu"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def check_plan(plan_path: str | Path, expected: dict | None = None, found: dict | None = None) -> None:
    """Raise EngineMismatchError unless the plan's build record matches this device.

    ``expected`` is the manifest's ``target.tensorrt`` ({"version", "gpu"}); ``found`` defaults to
    :func:`found_environment`. Versions must match to the patch level, or as far as a record goes.
    """
    plan_path = Path(plan_path)
    meta_path = plan_path.with_name(plan_path.name + ".json")
    if not meta_path.is_file():
        raise EngineMismatchError(f"{plan_path.name} has no build record ({meta_path.name})",
                                  hint="rebuild the plan with the bundle's build_engines.py on this device")
    built = json.loads(meta_path.read_text())
    built = built.get("key", built)  # build_engines.py writes {"key": {"tensorrt", "gpu", ...}, ...}
    found = found if found is not None else found_environment()
    if found.get("tensorrt_version") is None:
        raise EngineMismatchError("TensorRT is not importable here",
                                  hint="install the TensorRT Python bindings (Jetson: apt python3-libnvinfer)")
    for what, have in (("built with", built), ("expected by the bundle", expected or {})):
        want_v = have.get("tensorrt_version") or have.get("tensorrt") or have.get("version")
        # As precise as the record is: a bundle planned for "10.3" accepts any 10.3.x; a plan
        # built with 10.3.0.30 needs 10.3.0.
        n = min(3, len(str(want_v).split("."))) if want_v else 0
        if want_v and _version_key(want_v, n) != _version_key(found["tensorrt_version"], n):
            raise EngineMismatchError(
                f"{plan_path.name}: TensorRT {want_v} {what}, but TensorRT {found['tensorrt_version']} "
                f"is installed", hint="rebuild the plan on this device with build_engines.py")
        want_gpu = have.get("gpu")
        if want_gpu and found.get("gpu") and want_gpu != found["gpu"]:
            raise EngineMismatchError(
                f"{plan_path.name}: GPU {want_gpu!r} {what}, but this device has {found['gpu']!r}",
                hint="rebuild the plan on this device with build_engines.py")
