"""The table of backends: one declaration per backend, read by every place that needs one.

Targets (which backends and precisions a target file may name), the environment fingerprint
(whose runtime versions key the profile cache), compile (must engines be built on the device?),
the bundle writer (artifact format, which runtime the bundle needs) and the bundle runtime
(which engine runs the artifacts) all read :data:`BACKENDS`. Adding a backend is its module in
``esta_export/backends/`` plus one entry here.

Torch-free and import-light (stdlib only): it ships in bundles with the runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class BackendSpec:
    name: str                      # as target files spell it: backend = "..."
    module: str                    # host module: esta_export.backends.<module>
    package: str                   # the runtime's import name
    pip: str                       # what to install for it
    precisions: tuple[str, ...]    # what its compile can build
    artifact_format: str           # the compiled artifact as the bundle manifest names it
    built_on_device: bool          # engines can only be built on the device that runs them
    bundle_runtime: str            # the runtime engine that runs its artifacts in a bundle
    version_fallback: str | None = None   # dotted callable in the package when __version__ is absent
    # The device loop (device_loop.py): the module the device's Python must import before the
    # bundle's steps run (the runtime that validates and times it there), and how to install it.
    device_module: str = ""
    device_install: str = ""

    def installed(self) -> bool:
        """Whether the runtime package is importable here (found without importing it)."""
        try:
            return importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):
            return False

    def version(self) -> str | None:
        """The runtime's version as the fingerprint records it (None when not importable)."""
        try:
            mod = importlib.import_module(self.package)
        except Exception:  # noqa: BLE001 - a broken install is as good as absent for provenance
            return None
        version = getattr(mod, "__version__", None)
        if version is None and self.version_fallback:
            obj = mod
            for part in self.version_fallback.split("."):
                obj = getattr(obj, part, None)
            version = obj() if callable(obj) else None
        return None if version is None else str(version)


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("onnxruntime", module="onnxruntime", package="onnxruntime", pip="onnxruntime",
                precisions=("fp32", "int8"), artifact_format="onnx", built_on_device=False,
                bundle_runtime="onnxruntime", device_module="onnxruntime",
                device_install="pip install numpy onnxruntime"),
    BackendSpec("openvino", module="openvino", package="openvino", pip="openvino",
                precisions=("fp32", "fp16", "bf16", "int8"), artifact_format="openvino-ir",
                built_on_device=False, bundle_runtime="openvino",
                version_fallback="runtime.get_version", device_module="openvino",
                device_install="pip install numpy openvino"),
    BackendSpec("tensorrt", module="tensorrt", package="tensorrt", pip="tensorrt",
                precisions=("fp32", "fp16", "int8"), artifact_format="tensorrt-plan",
                built_on_device=True, bundle_runtime="tensorrt",
                # the graphs run on ONNX Runtime until the engines are built and valid
                device_module="onnxruntime",
                device_install="JetPack's python3-libnvinfer + pip install numpy onnxruntime cuda-python"),
)}

# Packages the fingerprint records besides the backends' runtimes.
EXTRA_PACKAGES = ("numpy",)


def backend_spec(name: str) -> BackendSpec | None:
    return BACKENDS.get(name)


def runtime_versions() -> dict[str, str]:
    """Versions of the backends' runtimes (and numpy) importable here; a missing one is absent."""
    found = {}
    for spec in BACKENDS.values():
        v = spec.version()
        if v is not None:
            found[spec.package] = v
    for name in EXTRA_PACKAGES:
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", None))
        except Exception:  # noqa: BLE001
            continue
    return found
