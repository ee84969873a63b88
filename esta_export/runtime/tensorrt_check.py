"""Refuse a TensorRT plan that was built for another TensorRT version or GPU, or failed validation.

TensorRT engines are not portable: a plan runs only with the TensorRT build that made it, on the
same GPU model. The bundle's build kit writes ``<plan>.json`` next to each plan with what it was
built with (its key) and the verdict of validating it against the fp32 reference; the manifest
records what the bundle expects. Before deserializing a plan the runtime compares both with what
it finds on this device, so a mismatch is a clear error, not a crash.

:func:`ready_engines` is the one gate the bundle runtime and its profiler use before running
engines; :class:`EngineSession` runs one through the bundle's ``build_engines.py`` (its
``TrtRunner``). TensorRT and cuda-python are imported only when an engine is actually run, so this
module imports without them. Written against TensorRT's documented Python API; NOT verified on
hardware (no TensorRT and no NVIDIA GPU where it was developed).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import threading
from pathlib import Path
from types import ModuleType

from .errors import EngineMismatchError
from .integrity import resolve_inside, sha256_file

NOT_READY = ("engines not built or not valid on this device: run `python3 build_engines.py "
             "kit.json` first")


class EnginesNotReadyError(EngineMismatchError):
    """A TensorRT bundle's engines are missing, stale or not validated on this device."""


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


def load_build_engines(root: str | Path) -> ModuleType:
    """The bundle's ``build_engines.py`` as a module (its TrtRunner, keys and gates)."""
    path = Path(root) / "build_engines.py"
    if not path.is_file():
        raise EnginesNotReadyError(f"{NOT_READY} (this bundle has no build_engines.py)")
    spec = importlib.util.spec_from_file_location("esta_build_engines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _kit_plans(root: Path, manifest: dict) -> dict[int, dict]:
    rel = ((manifest.get("target") or {}).get("tensorrt") or {}).get("kit") or "kit.json"
    path = resolve_inside(root, rel)
    if not path.is_file():
        raise EnginesNotReadyError(f"{NOT_READY} (no {rel} in the bundle)")
    try:
        plans = json.loads(path.read_text()).get("plans") or []
    except (ValueError, AttributeError):
        raise EnginesNotReadyError(f"{NOT_READY} ({rel} is not valid JSON)") from None
    return {int(p["id"]): p for p in plans if isinstance(p, dict) and "id" in p}


def _file_problem(root: Path, sid: int, plan: dict | None) -> tuple[str | None, dict]:
    """What keeps stitch ``sid``'s engine from running, judged from files alone (no TensorRT)."""
    if plan is None:
        return f"stitch {sid}: no build plan in kit.json", {}
    engine = resolve_inside(root, plan["engine"])
    meta_path = engine.with_name(engine.name + ".json")
    if not engine.is_file() or not meta_path.is_file():
        return f"stitch {sid}: not built", {}
    try:
        meta = json.loads(meta_path.read_text())
        key = meta["key"]
    except (ValueError, KeyError, TypeError):
        return f"stitch {sid}: unreadable build record {meta_path.name}", {}
    verdict = meta.get("validation") or {}
    if verdict.get("passed") is not True:
        what = "failed validation" if verdict.get("passed") is False else "not validated"
        if verdict.get("passed") is False and isinstance(verdict.get("value"), (int, float)):
            what += (f" ({verdict.get('metric')} = {verdict['value']:.6g}, threshold "
                     f"{verdict.get('threshold')})")
        elif verdict.get("reason"):
            what += f" ({verdict['reason']})"
        return f"stitch {sid}: {what}", {}
    onnx = resolve_inside(root, plan["onnx"])
    if not onnx.is_file() or sha256_file(onnx) != key.get("onnx_sha256"):
        return f"stitch {sid}: built from another graph than {plan['onnx']}", {}
    if verdict.get("engine_sha256") and sha256_file(engine) != verdict["engine_sha256"]:
        return f"stitch {sid}: {engine.name} is not the engine that was validated", {}
    return None, {"plan": plan, "engine": engine, "meta": meta, "onnx_sha256": key["onnx_sha256"]}


def ready_engines(root: str | Path, manifest: dict, ids, *, build_engines: ModuleType | None = None,
                  fingerprint: dict | None = None) -> dict[int, dict]:
    """``{id: {"plan", "engine", "meta"}}`` when every engine of ``ids`` is built, built for this
    device (TensorRT version, GPU, L4T, precision, shapes, graph hash) and passed validation.

    Raises :class:`EnginesNotReadyError` (one line: :data:`NOT_READY` and the first problem).
    File checks come first, so a bundle without engines is refused without importing TensorRT.
    """
    root = Path(root)
    plans = _kit_plans(root, manifest)
    ready, problems = {}, []
    for sid in ids:
        problem, info = _file_problem(root, int(sid), plans.get(int(sid)))
        if problem:
            problems.append(problem)
        else:
            ready[int(sid)] = info
    if not problems:
        be = build_engines or load_build_engines(root)
        try:
            fp = fingerprint if fingerprint is not None else be.device_fingerprint()
        except ImportError as err:
            raise EnginesNotReadyError(f"{NOT_READY} (TensorRT's Python bindings are not importable "
                                       f"here: {err})") from None
        for sid, info in ready.items():
            stale = be.check_plan_key(info["meta"]["key"],
                                      be.engine_key(info["plan"], info["onnx_sha256"], fp))
            if stale:
                problems.append(f"stitch {sid}: built for another setup (differs in: {', '.join(stale)})")
    if problems:
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise EnginesNotReadyError(f"{NOT_READY} ({problems[0]}{more})")
    return ready


class EngineSession:
    """A built, validated engine behind the call the bundle runtime makes on an ONNX Runtime
    session: ``run(None, {name: x}) -> [logits]``. One execution context and stream per engine,
    so calls are serialized; batches above the optimization profile's maximum run in slices.

    Each call copies the input host->device and the logits device->host (TrtRunner.infer), so a
    timed call includes both transfers. NOT verified on hardware.
    """

    def __init__(self, build_engines: ModuleType, ready: dict) -> None:
        self._be = build_engines
        self.plan, self.meta = ready["plan"], ready["meta"]
        self.max_batch = int(build_engines.max_batch(self.plan))
        self._runner = build_engines.TrtRunner(ready["engine"])
        self._lock = threading.Lock()

    def run(self, output_names, feeds: dict):
        (x,) = feeds.values()
        with self._lock:
            return [self._be.infer_in_chunks(self._runner, x, self.max_batch)]

    def close(self) -> None:
        runner, self._runner = getattr(self, "_runner", None), None
        if runner is not None:
            runner.close()

    def __del__(self) -> None:  # device buffers go with the last reference (Bundle.unload)
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may already be gone
            pass
