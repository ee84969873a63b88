"""Which device this is, in one place: what an engine is tied to and what a bundle expects.

A TensorRT plan runs only with the TensorRT build that made it, on the GPU it was built for. The
identity of "this device" is read by :func:`fingerprint` alone (TensorRT version, the CUDA
device's name and compute capability, the L4T release, the Jetson module string), at build time
into the engine's key and at load time to check it, so both sides compare values from the same
source. A bundle's expectation (the target it was compiled for) is compared with the fingerprint
by :func:`expectation_problems` on fields that mean the same thing on both sides: the TensorRT
release, the compute capability, the Jetson module family. The target's marketing name ("NVIDIA
Jetson AGX Orin 64GB") is never compared with the CUDA device name ("Orin").
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The engine key's fields that come from the device (the rest come from the build plan).
DEVICE_FIELDS = ("tensorrt", "gpu", "compute_capability", "l4t")


def cudart():
    """CUDA runtime bindings of cuda-python: ``cuda.bindings.runtime`` from 12.6 on; the older
    ``cuda.cudart`` module (deprecated there) before."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _cuda_device() -> tuple[str | None, str | None]:
    try:
        rt = cudart()
    except ImportError:
        return None, None
    err, prop = rt.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None, None
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.strip("\x00 "), f"{prop.major}.{prop.minor}"


def _read(path: str, binary: bool = False) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    if binary:  # device-tree strings are NUL-separated
        return p.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    with open(p, errors="replace") as f:
        return f.readline().strip()


def fingerprint() -> dict:
    """This device. Raises ImportError when TensorRT's Python bindings are missing."""
    import tensorrt as trt

    gpu, cc = _cuda_device()
    return {"tensorrt": trt.__version__, "machine": platform.machine(), "gpu": gpu,
            "compute_capability": cc, "l4t": _read("/etc/nv_tegra_release"),
            "module": _read("/proc/device-tree/compatible", binary=True)}


def is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


def engine_key(plan: dict, onnx_sha256: str, fp: dict) -> dict:
    """Engine cache key: a plan is reusable only when every field matches."""
    return {**{k: fp.get(k) for k in DEVICE_FIELDS},
            "precision": plan["precision"], "profile": plan["profile"],
            "dla_core": plan.get("dla_core"),
            "builder_optimization_level": plan.get("builder_optimization_level"),
            "onnx_sha256": onnx_sha256}


def stale_fields(saved: dict, current: dict) -> list[str]:
    """Fields that differ between the key a plan was built with and this device: [] = usable."""
    return [k for k in current if saved.get(k) != current[k]]


def module_family(module: str | None) -> str | None:
    """"p3701-0005" -> "p3701": the module family (a devkit reports its carrier's SKU too)."""
    if not module:
        return None
    return module.split("-")[0].strip().lower() or None


def module_matches(module: str | None, compatible: str | None) -> bool:
    """Whether the device-tree ``compatible`` string names the target's module family."""
    family = module_family(module)
    return not family or not compatible or family in compatible.lower()


def expectation_problems(expected: dict | None, fp: dict) -> list[str]:
    """Why this device is not the one the bundle was made for ([] = it is, as far as both know).

    ``expected`` is the manifest's ``target.tensorrt``: ``version`` (as precise as it is given:
    "10.3" accepts any 10.3.x), ``compute_capability`` and ``module`` (Jetson P/N), each optional.
    """
    expected = expected or {}
    problems = []
    want = str(expected.get("version") or "").lstrip(">=~ ")
    have = str(fp.get("tensorrt") or "")
    if want and not str(expected.get("version")).startswith(">="):
        n = len(want.split("."))
        if have.split(".")[:n] != want.split(".")[:n]:
            problems.append(f"TensorRT {want} expected by the bundle, {have or 'none'} installed")
    cc = expected.get("compute_capability")
    if cc and fp.get("compute_capability") and str(cc) != str(fp["compute_capability"]):
        problems.append(f"compute capability {cc} expected by the bundle, this GPU has "
                        f"{fp['compute_capability']} ({fp.get('gpu')})")
    if not module_matches(expected.get("module"), fp.get("module")):
        problems.append(f"Jetson module {expected.get('module')} expected by the bundle, this "
                        f"board is {fp.get('module')!r}")
    return problems
