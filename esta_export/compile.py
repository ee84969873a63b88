"""The compile stage: every stitch of an export folder, compiled for one target and validated.

Reads ``<export>/export.json`` and writes ``<out>/``::

    compile.json           written last: its presence means the stage finished
    reference.npz          the reference inputs ``x`` (+ ``y`` labels) and fp32 logits ``ref_<id>``
    stitch_<id>/           one backend artifact per stitch + artifact.json (its record)
    ...                    what the backend's ``finalize`` adds: e.g. a device build kit
                           (kit.json, build_engines.py, README_DEVICE.md) when engines are
                           built on the device and this is not it

Reference inputs are the calibration data when given (``.npz`` with ``x``: preprocessed float32
NCHW, optional ``y``: integer labels), else seeded random normal inputs. Random inputs can only
measure agreement with fp32; the int8 accuracy-drop gate needs labelled data.

A stitch that fails to compile or validate is listed under ``failed`` with its reason and left
out of ``artifacts``; the others go on. Finished stitches are reused on a re-run (keyed by ONNX
sha256, target file sha256, precision, calibration sha256 and tool version) unless ``fresh``, so
an interrupted compile resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .backends import get_backend
from .errors import BackendUnavailableError, CompileError, EstaError, FormatError, InputError, ResourceError
from .fsutil import (atomic_path, atomic_write_json, check_input_file, check_not_input, check_out_dir,
                     output_lock, prepare_out_dir, read_json, sha256_bytes, sha256_file, stage_output)
from .runtime.backends import BACKENDS as BACKEND_TABLE
from .stages import read_compile, write_compile
from .targets import Target, check_graph, load_target
from .validate import describe_failure, validate

SCHEMA = "esta-export/compile"
SCHEMA_VERSION = "1.0"
DEFAULT_SAMPLES = 32
MAX_REFERENCE_SAMPLES = 256  # validation beyond this costs time and adds little
MAX_REFERENCE_BYTES = 1 << 30  # random reference inputs: a bound on what --samples may allocate


def compile_export(export_dir: str | Path, target: Target | str, out_dir: str | Path,
                   precision: str | None = None,
                   calibration: str | Path | np.ndarray | None = None,
                   stitch_ids: list[int] | None = None,
                   progress: Callable[[str], None] | None = None, *, fresh: bool = False,
                   samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Compile and validate the stitches of ``export_dir`` for ``target``; returns compile.json."""
    say = progress or (lambda _msg: None)
    export_dir = Path(export_dir)
    spec = read_export(export_dir)
    target = target if isinstance(target, Target) else load_target(target)
    precision = target.resolve_precision(precision)
    check_graph(target, spec.get("opset"), spec.get("layernorm"))
    backend = get_backend(target.backend)
    if not BACKEND_TABLE[target.backend].built_on_device:  # a device-built backend may prepare a device kit without the library
        backend.require()
    check_out_dir(out_dir)
    check_not_input(out_dir, {"the export folder": export_dir,
                              "--calibration": calibration if isinstance(calibration, (str, Path)) else None})
    stitches = _select(spec, stitch_ids)
    x, y, source = reference_inputs(spec, calibration, samples, seed)
    final = prepare_out_dir(out_dir)
    with output_lock(final), stage_output(final, "compile.json") as out_dir:
        summary = _compile_into(out_dir, export_dir, spec, target, precision, backend, stitches, x, y, source,
                                fresh, say)
        if not summary["artifacts"] and out_dir != final:
            first = summary["failed"][0]["reason"] if summary["failed"] else "no stitch to compile"
            raise CompileError(f"no stitch compiled and validated for {target.name} ({len(summary['failed'])} "
                               f"failed; first: {first})",
                               hint=f"the earlier compile in {final} is kept; fix the cause and re-run")
        return summary


def _compile_into(out_dir: Path, export_dir: Path, spec: dict, target: Target, precision: str, backend,
                  stitches: list[dict], x: np.ndarray, y: np.ndarray | None, source: str, fresh: bool,
                  say: Callable[[str], None]) -> dict[str, Any]:
    calib_sha = sha256_bytes(x.tobytes() + (b"" if y is None else y.tobytes()))
    runtime = (backend.describe_for(target) if hasattr(backend, "describe_for")
               else backend.describe())

    artifacts, failed, refs, built_all = [], [], {}, True
    for st in stitches:
        sid, route = int(st["id"]), st.get("route", str(st["id"]))
        onnx_path = export_dir / st["onnx"]
        try:
            ref = reference_logits(onnx_path, x)
            refs[f"ref_{sid}"] = ref
            rec = _compile_one(backend, target, precision, onnx_path, out_dir, sid, x, y, ref,
                               calib_sha, fresh, say)
        except EstaError as err:
            failed.append({"id": sid, "route": route, "reason": str(err)})
            say(f"stitch {sid} ({route}): FAILED: {err}")
            continue
        except Exception as err:  # runtimes raise their own types; one stitch must not stop all
            _raise_if_disk_full(err, out_dir)
            reason = f"{type(err).__name__}: {_first_line(err)}"
            failed.append({"id": sid, "route": route, "reason": reason})
            say(f"stitch {sid} ({route}): FAILED: {reason}")
            continue
        v = rec["validation"]
        if v.get("passed") is False:
            failed.append({"id": sid, "route": route, "reason": describe_failure(v)})
            say(f"stitch {sid} ({route}): FAILED: {describe_failure(v)}")
            continue
        built_all &= rec["built"]
        artifacts.append({"id": sid, "route": route, "path": rec["path"],
                          "sha256": rec["files"].get(rec["path"]), "files": rec["files"],
                          # The stable identity of an artifact built later on the device (an
                          # engine plan): the graph files it will be built from. Profile records
                          # made on the device carry this key, so select can match them.
                          "source_sha256": None if rec["built"] else _graph_key(rec["files"]),
                          "precision": precision, "built": rec["built"], "validation": v,
                          "flops": st.get("flops"), "params": st.get("params"),
                          "info": rec["info"], "reused": rec.get("reused", False)})
        if (rec["info"] or {}).get("int8_isa") is not None:
            # Which instruction sets the int8 artifact was calibrated and validated on, the
            # quantizer setting used, and what a device CPU needs for the validation to hold.
            artifacts[-1]["int8_isa"] = rec["info"]["int8_isa"]

    kit_files: list[str] = []
    if hasattr(backend, "finalize") and artifacts:
        kit_files = backend.finalize(out_dir, target,
                                     [{"id": a["id"], "dir": _stitch_dir(a["id"])} for a in artifacts])
    _write_reference(out_dir / "reference.npz", x, y, refs)
    engines_built = bool(artifacts) and built_all
    summary = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tool_version": __version__,
        "target": target.name, "target_file_sha256": target.file_sha256,
        "target_spec": target.to_dict(),
        "backend": target.backend, "precision": precision, "runtime": runtime,
        "verified_on_hardware": target.verified,
        "engines_built": engines_built,
        "device_build_required": BACKEND_TABLE[target.backend].built_on_device and not engines_built,
        "device_kit": kit_files,
        "export": _rel_or_abs(export_dir, out_dir),
        "supernet_sha256": (spec.get("supernet") or {}).get("sha256"),
        "reference": "reference.npz",
        "reference_inputs": {"source": source, "samples": int(len(x)), "labelled": y is not None,
                             "sha256": calib_sha},
        "artifacts": artifacts, "failed": failed,
    }
    write_compile(out_dir, summary)
    return summary


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n", 1)[0].split())
    return text[:300] or type(err).__name__


_DISK_FULL = ("No space left", "File too large", "Disk quota exceeded", "ENOSPC", "EFBIG")


def _raise_if_disk_full(err: BaseException, out_dir: Path) -> None:
    """A full disk fails every later stitch too: stop with one line instead of N runtime dumps."""
    import errno

    if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)) or \
            any(m in str(err) for m in _DISK_FULL):
        raise ResourceError(f"the disk under {out_dir} is full (or a file-size limit was reached) while compiling",
                            hint="free space or choose another --out, then re-run the same command "
                                 "(finished stitches are kept)") from None


def read_export(export_dir: Path) -> dict[str, Any]:
    from .stages import read_export as read
    return read(export_dir)


def reference_inputs(spec: dict, calibration: str | Path | np.ndarray | None, samples: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(x, y, source)``: calibration/validation inputs in the export's input shape."""
    shape = spec["input"]["shape"]
    chw = tuple(int(d) for d in shape[1:])
    y = None
    if calibration is None:
        if samples * int(np.prod(chw)) * 4 > MAX_REFERENCE_BYTES:
            raise ResourceError(f"{samples} random reference inputs of shape {list(chw)} need "
                                f"{samples * int(np.prod(chw)) * 4 / 1e9:.1f} GB",
                                hint=f"use fewer --samples (at most {MAX_REFERENCE_BYTES // (4 * int(np.prod(chw)))})")
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((samples, *chw)).astype(np.float32)
        return x, None, f"random normal (seed {seed}; no labels: accuracy drop not measured)"
    if isinstance(calibration, np.ndarray):
        x, source = calibration, "array"
    else:
        from .data import load_npz

        path = Path(calibration)
        x, y = load_npz(path, "calibration file")
        source = str(path)
    if x.ndim != 4 or tuple(x.shape[1:]) != chw:
        raise InputError(f"calibration inputs have shape {list(x.shape)}, the export needs "
                         f"[N, {', '.join(map(str, chw))}]",
                         hint="preprocess the images to the export's input size (NCHW)")
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise InputError("calibration inputs must be finite floating-point values",
                         hint="save preprocessed float32 pixels")
    if len(x) == 0:
        raise InputError("the calibration file holds no samples (x has length 0)",
                         hint="save at least one preprocessed input in 'x'")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise InputError("calibration labels 'y' must be one integer per input",
                             hint="save y as an int array of length N")
        classes = (spec.get("output") or {}).get("num_classes")
        if isinstance(classes, int) and len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise InputError(f"calibration labels 'y' hold {int(y.min())}..{int(y.max())}, outside the "
                             f"model's {classes} classes (0..{classes - 1})",
                             hint="save the class index of each input (0-based) as y")
    x = x[:MAX_REFERENCE_SAMPLES].astype(np.float32)
    return x, None if y is None else y[:MAX_REFERENCE_SAMPLES], source


def reference_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """The fp32 reference: the exported graph on ONNX Runtime CPU, loaded by path."""
    import onnxruntime as ort

    if not onnx_path.is_file():
        raise InputError(f"stitch graph not found: {onnx_path}", hint="re-run the export")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    # A copy, not np.asarray: ONNX Runtime's output array can keep the session's memory arena
    # (its peak activations) alive for as long as the array lives, and compile keeps every
    # stitch's reference: 35 held arenas took the demo's compile past 20 GB.
    return np.array(sess.run(None, {name: x})[0], dtype=np.float32, copy=True)


def load_artifact(compile_dir: str | Path, stitch_id: int, target: Target | str | None = None):
    """A runner for one compiled stitch (for profiling and benchmarks): ``runner.infer(x)``."""
    compile_dir = Path(compile_dir)
    summary = read_compile(compile_dir)
    art = next((a for a in summary["artifacts"] if a["id"] == stitch_id), None)
    if art is None:
        raise InputError(f"stitch {stitch_id} has no artifact in {compile_dir}",
                         hint="see compile.json: it may be listed under 'failed'")
    if target is None:
        target = load_target(summary["target"])
    elif not isinstance(target, Target):
        target = load_target(target)
    return get_backend(summary["backend"]).load(compile_dir / art["path"], target)


# ---- internals ------------------------------------------------------------------------------
def _graph_key(files: dict[str, str]) -> str:
    """One hash over a stitch's ONNX graph and its external data (name and sha256 of each)."""
    parts = sorted(f"{name.rsplit('/', 1)[-1]}:{h}" for name, h in files.items()
                   if name.endswith((".onnx", ".onnx.data")))
    return sha256_bytes("\n".join(parts).encode())


def _stitch_dir(sid: int) -> str:
    return f"stitch_{sid:03d}"


def _select(spec: dict, ids: list[int] | None) -> list[dict]:
    stitches = spec["stitches"]
    if ids is None:
        return stitches
    known = {int(s["id"]) for s in stitches}
    missing = sorted(set(ids) - known)
    if missing:
        from .errors import StitchError
        raise StitchError(f"stitch ids {missing} are not in this export",
                          hint=f"exported ids: {sorted(known)}")
    return [s for s in stitches if int(s["id"]) in set(ids)]


def _compile_one(backend, target: Target, precision: str, onnx_path: Path, out_dir: Path,
                 sid: int, x: np.ndarray, y: np.ndarray | None, ref: np.ndarray,
                 calib_sha: str, fresh: bool, say: Callable[[str], None]) -> dict[str, Any]:
    d = out_dir / _stitch_dir(sid)
    key = {"onnx_sha256": sha256_file(onnx_path), "target_file_sha256": target.file_sha256,
           "precision": precision, "calibration_sha256": calib_sha, "tool_version": __version__}
    isa = _int8_isa(backend, target, precision)
    if isa is not None:  # an int8 artifact validated on another CPU is not reused here
        key["int8_isa"] = {"setting": isa["setting"], "cpu_flags": isa["validated_on"]["flags"]}
    if not fresh:
        rec = _reusable(d, key)
        if rec is not None:
            say(f"stitch {sid}: reused {rec['path']}")
            return rec
    if d.exists():
        shutil.rmtree(d)
    art = backend.compile(onnx_path, target, d, precision, calibration=x)
    validation = _validate(backend, target, precision, d / art.path, art.built, x, y, ref)
    files = {f: sha256_file(d / f) for f in art.files}
    rec = {"key": key, "path": f"{_stitch_dir(sid)}/{art.path}", "built": art.built,
           "files": {f"{_stitch_dir(sid)}/{f}": h for f, h in files.items()},
           "precision": precision, "info": art.info, "validation": validation}
    atomic_write_json(d / "artifact.json", rec)  # last: the stitch's "finished" mark
    if validation.get("passed") is None:
        say(f"stitch {sid}: compiled, not validated ({validation['reason']})")
    else:
        say(f"stitch {sid}: {validation['metric']} = {validation['value']:.4g} "
            f"({'ok' if validation['passed'] else 'FAILED'})")
    return rec


def _int8_isa(backend, target: Target, precision: str) -> dict | None:
    """The int8 plan (weight range, quantizer setting, this CPU's flags) of backends whose int8
    exactness depends on the CPU; None otherwise."""
    plan = getattr(backend, "int8_isa", None)
    return plan(target) if precision == "int8" and plan is not None else None


def _validate(backend, target: Target, precision: str, path: Path, built: bool, x: np.ndarray,
              y: np.ndarray | None, ref: np.ndarray) -> dict[str, Any]:
    if not built:
        return {"tier": 3, "passed": None,
                "reason": "engine not built here: validate on the device after building it"}
    try:
        runner = backend.load(path, target)
    except BackendUnavailableError as err:  # e.g. intel-gpu IR compiled on a machine without one
        return {"tier": 3, "passed": None, "reason": str(err)}
    try:
        step = target.shapes.batch_sizes[0] if target.shapes.static else target.shapes.batch_max
        out = np.concatenate([runner.infer(x[i:i + step]) for i in range(0, len(x), step)])
    finally:
        runner.close()
    return validate(precision, out, ref, target.validation, labels=y)


def _reusable(d: Path, key: dict) -> dict | None:
    meta = d / "artifact.json"
    if not meta.is_file():
        return None
    try:
        rec = json.loads(meta.read_text())
    except ValueError:
        return None
    if rec.get("key") != key:
        return None
    root = d.parent
    for rel, h in rec.get("files", {}).items():
        if not (root / rel).is_file() or sha256_file(root / rel) != h:
            return None
    rec["reused"] = True
    return rec


def _write_reference(path: Path, x: np.ndarray, y: np.ndarray | None,
                     refs: dict[str, np.ndarray]) -> None:
    arrays = {"x": x, **refs}
    if y is not None:
        arrays["y"] = y
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _rel_or_abs(path: Path, base: Path) -> str:
    import os
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())
