"""The bundle runtime's engines, in one table: which engine runs a bundle's stitches, what it
must check before it may, and how it opens one stitch.

A bundle's native engine is the one the table of backends names for its target's backend
(``BackendSpec.bundle_runtime``), or the one that runs its artifacts' format. ONNX Runtime runs
the ONNX graphs every bundle can hold; a native engine that allows it falls back to them when it
is not ready (TensorRT before its engines are built and validated on this device), and
``Bundle.engine_note`` says so. Adding an engine is one class here and one entry in
:data:`ENGINES` (plus its module in runtime/, as ``ov_engine.py``).

Imports nothing heavy at module level: each engine imports its runtime when it opens a stitch.
"""

from __future__ import annotations

from typing import Any

from .backends import BACKENDS
from .errors import BundleError, IntegrityError
from .integrity import resolve_inside, sha256_file

# ``bundle`` below is a runtime.bundle.Bundle (not imported: bundle.py imports this table).
Bundle = Any


class NotReady(Exception):
    """The native engine cannot run here yet (``message``: why, in one line)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Engine:
    name: str = ""
    label: str = ""                 # as people name it
    bundle_kind: str = ""           # "a TensorRT bundle"
    formats: tuple[str, ...] = ()   # artifact formats only this engine runs
    stitches_are: str = ""          # "OpenVINO IR": what its stitches are, when only it runs them
    onnx_fallback: bool = False     # may the ONNX graphs stand in when it is not ready / on request

    def is_native(self, bundle: Bundle) -> bool:
        """An engine with its own artifact format runs the bundles that hold that format; one
        that builds its engines from the ONNX graphs (TensorRT) the bundles whose backend the
        table of backends maps to it."""
        if self.formats:
            return bool(set(self.formats) & artifact_formats(bundle))
        spec = BACKENDS.get((bundle.manifest.get("target") or {}).get("backend"))
        return spec is not None and spec.bundle_runtime == self.name

    def prepare(self, bundle: Bundle) -> dict[int, Any]:
        """Check this engine can run the bundle here (raise NotReady or BundleError); returns
        per-stitch state the engine keeps (``Bundle._engines``)."""
        return {}

    def fallback_note(self, why: str | None) -> str:
        """What ``Bundle.engine_note`` says when ONNX Runtime runs this engine's bundle."""
        if why is None:
            return (f"{self.label} bundle run with ONNX Runtime on request: not the engines the "
                    "latencies were measured with")
        return (f"{self.label} bundle running its ONNX graphs with ONNX Runtime, not its {self.label} "
                f"engines: {why}")

    def open_session(self, bundle: Bundle, entry: dict) -> Any:
        raise NotImplementedError

    def status(self, bundle: Bundle, found: dict | None) -> dict[int, str]:
        """Per stitch "ok" or why its device-built engine is not used here ({}: none to build)."""
        return {}


class OnnxRuntimeEngine(Engine):
    name, label = "onnxruntime", "ONNX Runtime"

    def is_native(self, bundle: Bundle) -> bool:
        return True   # the ONNX graphs: what every other engine may fall back to

    def open_session(self, bundle: Bundle, entry: dict) -> Any:
        return bundle._create_ort_session(entry)


class OpenVinoEngine(Engine):
    name, label, bundle_kind = "openvino", "OpenVINO", "an OpenVINO bundle"
    formats, stitches_are = ("openvino-ir",), "OpenVINO IR"

    def prepare(self, bundle: Bundle) -> dict[int, Any]:
        from .ov_engine import _core

        _core()  # one clear line now if openvino is missing, not at the first load
        return {}

    def open_session(self, bundle: Bundle, entry: dict) -> Any:
        from .ov_engine import OpenVinoSession

        art = entry["artifact"]
        xml = resolve_inside(bundle.root, art["path"])
        if not xml.is_file() or sha256_file(xml) != art.get("sha256"):
            raise IntegrityError(f"bundle file {art['path']} (stitch {entry['id']}) does not match the "
                                 "validated artifact's sha256", hint="re-copy the bundle")
        weights = resolve_inside(bundle.root, art.get("weights") or "")
        if not bundle._files_verified and weights not in bundle._checked_files:  # else hashed at open
            files = {f.get("path"): f.get("sha256") for f in bundle.manifest.get("files", [])
                     if isinstance(f, dict)}
            if not weights.is_file() or sha256_file(weights) != files.get(art.get("weights")):
                raise IntegrityError(f"bundle file {art.get('weights')} does not match the manifest's sha256",
                                     hint="re-copy the bundle")
            bundle._checked_files.add(weights)
        session = bundle.manifest.get("session") or {}
        pin = session.get("cpu_pinning")
        return OpenVinoSession(xml, weights, art.get("openvino") or {}, threads=bundle.threads,
                               performance_hint=session.get("performance_hint"),
                               cpu_pinning=pin if isinstance(pin, bool) else None)


class TensorRTEngine(Engine):
    name, label, bundle_kind = "tensorrt", "TensorRT", "a TensorRT bundle"
    onnx_fallback = True

    def prepare(self, bundle: Bundle) -> dict[int, Any]:
        from .tensorrt.check import EnginesNotReadyError, ready_engines

        try:
            return ready_engines(bundle.root, bundle.manifest, list(bundle._entries))
        except EnginesNotReadyError as err:
            raise NotReady(err.message) from err

    def open_session(self, bundle: Bundle, entry: dict) -> Any:
        from .tensorrt.session import open_session

        return open_session(bundle.root, bundle._engines[int(entry["id"])])

    def status(self, bundle: Bundle, found: dict | None) -> dict[int, str]:
        from .tensorrt.check import engine_problems

        if not any(e.get("engine") for e in bundle._entries.values()):
            return {}
        ready, problems = engine_problems(bundle.root, bundle.manifest, list(bundle._entries), fp=found)
        return {sid: "ok" if sid in ready else problems[sid] for sid in sorted(bundle._entries)}


ENGINES: dict[str, Engine] = {e.name: e for e in (OnnxRuntimeEngine(), OpenVinoEngine(), TensorRTEngine())}


def artifact_formats(bundle: Bundle) -> set[str]:
    return {(e.get("artifact") or {}).get("format", "onnx") for e in bundle._entries.values()}


def choose(bundle: Bundle, requested: str) -> tuple[str, str | None, dict[int, Any]]:
    """(engine name, note, per-stitch engine state) for ``Bundle.open(engine=requested)``."""
    if requested != "auto" and requested not in ENGINES:
        names = [f"'{n}'" for n in ENGINES]
        raise BundleError(f"engine={requested!r} is not 'auto', {', '.join(names[:-1])} or {names[-1]}")
    native = next((e for n, e in ENGINES.items() if n != "onnxruntime" and e.is_native(bundle)), None)
    ort = ENGINES["onnxruntime"]
    if requested not in ("auto", "onnxruntime") and (native is None or requested != native.name):
        wanted = ENGINES[requested]
        if native is not None and not native.onnx_fallback:
            raise _cannot_run(native, requested)
        backend = (bundle.manifest.get("target") or {}).get("backend")
        raise BundleError(f"engine={requested!r} needs {wanted.bundle_kind}; this one is for {backend} "
                          f"({', '.join(sorted(artifact_formats(bundle)))} artifacts)",
                          hint="open it with engine='auto' or 'onnxruntime'")
    if native is None:
        return ort.name, None, {}
    if requested == "onnxruntime":
        if not native.onnx_fallback:
            raise _cannot_run(native, requested)
        return ort.name, native.fallback_note(None), {}
    try:
        return native.name, None, native.prepare(bundle)
    except NotReady as err:
        if requested == native.name or not native.onnx_fallback:
            raise (err.__cause__ or BundleError(err.message))
        return ort.name, native.fallback_note(err.message), {}


def _cannot_run(native: Engine, requested: str) -> BundleError:
    return BundleError(f"this bundle's stitches are {native.stitches_are or native.label}; "
                       f"engine={requested!r} cannot run them",
                       hint=f"open it with engine='auto' or '{native.name}'")
