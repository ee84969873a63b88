"""The one backend interface (Polygraphy-like): compile a graph, load it into a runner, describe.

A backend turns one stitch's ONNX graph into an artifact for a target (``compile``) and loads
that artifact into a :class:`Runner` whose ``infer`` takes float32 NCHW pixels and returns
float32 logits. ``describe`` reports the runtime, its version and the capabilities that decided
how the artifact was built, so compile.json records what produced each file.

Version differences of a runtime live in one capability table inside its backend file.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError, CompileError
from ..targets import Target

if TYPE_CHECKING:  # numpy stays out of 'esta-export targets'
    import numpy as np

    from ..bundle.parts import BundleParts

__all__ = ["Backend", "Runner", "CompiledArtifact", "BackendUnavailableError", "CompileError"]


@dataclass(frozen=True)
class CompiledArtifact:
    """What ``compile`` produced for one graph.

    ``path`` is the main file, relative to the ``out_dir`` given to ``compile``; ``files`` lists
    every file the artifact needs (relative too), the main file included. ``built`` is False when
    the backend could only prepare a device build (TensorRT off the device).
    """
    path: str
    files: tuple[str, ...]
    precision: str
    built: bool = True
    info: dict[str, Any] = field(default_factory=dict)


class Runner(abc.ABC):
    """A loaded artifact. ``infer`` is synchronous: it returns when the logits are on the host."""

    info: dict[str, Any]

    #: Where :meth:`compute_ns` comes from (None: the runtime reports no time of its own).
    compute_source: str | None = None

    @abc.abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def compute_ns(self) -> int | None:
        """The runtime's own time for the last ``infer`` (what its benchmark tool reports), where
        it measures one; the profiler records it next to the wall time the caller sees."""
        return None

    def close(self) -> None:
        """Release the runtime's resources (sessions, compiled models)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(abc.ABC):
    name: str = ""
    #: Module whose presence makes the backend usable; checked without importing it.
    module: str = ""

    @abc.abstractmethod
    def available(self) -> bool:
        """True when the runtime can be imported here (not whether the target's device is here)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """``{"runtime", "version", "capabilities": {...}}``; importing the runtime is allowed."""

    @abc.abstractmethod
    def compile(self, onnx_path: Path, target: Target, out_dir: Path, precision: str,
                calibration: np.ndarray | None = None) -> CompiledArtifact: ...

    @abc.abstractmethod
    def load(self, artifact_path: Path, target: Target) -> Runner: ...

    # ---- bundling: how bundle/writer.py puts this backend's artifacts into a bundle ----------
    # The defaults bundle the ONNX graph every backend starts from (re-pointed into the bundle's
    # one weights file), or copy an artifact without one as compiled. A backend with its own
    # artifact format overrides them here, in its file; the writer never names a backend.

    def bundle_artifact(self, parts: BundleParts, sid: int, art: dict[str, Any]) -> dict[str, Any]:
        """The manifest entry fields of stitch ``sid`` (at least ``artifact``), files written."""
        onnx_rel = parts.onnx_source(art)
        if onnx_rel is not None:
            return {"artifact": parts.add_onnx_graph(sid, onnx_rel, art)}
        from ..runtime.backends import BACKENDS

        return {"artifact": parts.copy_as_compiled(sid, art, BACKENDS[self.name].artifact_format)}

    def bundle_weights(self, parts: BundleParts) -> dict[str, Any] | None:
        """The manifest's ``weights`` when not the shared ONNX weights file (None: that one)."""
        return None

    def check_bundled(self, parts: BundleParts, entry: dict[str, Any]) -> dict[str, Any] | None:
        """``bundle_check`` of one bundled stitch: the bundled copy computes what the compiled
        artifact computed (None: no check for this format)."""
        if entry["artifact"]["format"] == "onnx":
            return parts.check_onnx_graph(entry)
        return None

    def bundle_device_build(self, parts: BundleParts) -> dict[str, Any]:
        """For backends whose engines are built on the device (the table's ``built_on_device``):
        ship what the device build needs; returns fields for the manifest's ``target``."""
        return {}

    def bundle_readme(self, manifest: dict[str, Any]) -> dict[str, str]:
        """Backend-specific parts of the bundle's README.md (``weights_desc``, ``device_build``)."""
        return {}

    def require(self) -> None:
        if not self.available():
            raise BackendUnavailableError(
                f"backend {self.name} needs the Python package {self.module!r}, not installed here",
                hint=f"install it (pip install {self.module}) or choose a target of another backend")
