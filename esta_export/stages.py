"""The files stages pass each other: where they live under OUT/ and what they must hold.

This module is the one owner of the main job's layout and of the typed, schema-checked readers
and writers of the stage files (docs/stages.md)::

    OUT/run.json                 the run configuration (replay with --config)
    OUT/export/                  export.json + stitch graphs + weights.bin
    OUT/compiled/<T>/            compile.json + artifacts
    OUT/profiles/<T>.jsonl       profile records (append-only, locked)
    OUT/profiles/<T>.predictions.json   the latency predictor profile fitted, and its predictions
    OUT/profiles/<T>.tune.json   profile --tune's session candidates and choice
    OUT/accuracy/<T>.jsonl       accuracy records (artifact sha256 x data sha256, append-only)
    OUT/select/<T>.json          the selection
    OUT/report/                  report.json, report.html, PNGs
    OUT/bundle/<T>/              the bundle

A compiled folder outside that layout keeps its profiles/, accuracy/ and select/ inside itself.
Every reader checks type, range and finiteness of the fields the next stage relies on, and
cross-checks files that must agree; a bad file ends in one :class:`FormatError` line naming the
file, the field and the fix. Readers tolerate fields they do not know (later minor versions add
optional ones) and refuse a newer major schema version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import FormatError, InputError
from .fsutil import append_json_lines, locked_file
from .validation import Fields

EXPORT_SUMMARY = "export.json"
COMPILE_SUMMARY = "compile.json"
EXPORT_SCHEMA = "esta-export/export"
COMPILE_SCHEMA = "esta-export/compile"
SELECTION_SCHEMA = "esta-export/selection"
ACCURACY_SCHEMA = "esta-export/accuracy"
PREDICTIONS_SCHEMA = "esta-export/predictions"
SCHEMA_VERSION = "1.0"
_MAJOR = 1


# ---- layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The main job's folder ``OUT``: one method per stage output."""

    root: Path
    #: what the main job writes directly under OUT (nothing else there is ours)
    ENTRIES = ("run.json", "export", "compiled", "profiles", "accuracy", "select", "report", "bundle",
               "device")

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def run_config(self) -> Path:
        return self.root / "run.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    def compiled_dir(self, target: str) -> Path:
        return self.root / "compiled" / target

    def profile_store(self, target: str) -> Path:
        return self.root / "profiles" / f"{target}.jsonl"

    def accuracy_store(self, target: str) -> Path:
        return self.root / "accuracy" / f"{target}.jsonl"

    def selection(self, target: str) -> Path:
        return self.root / "select" / f"{target}.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def device_dir(self, target: str) -> Path:
        """What the device loop stages for, and brings back from, the device of ``target``."""
        return self.root / "device" / target

    def bundle_dir(self, target: str) -> Path:
        return self.root / "bundle" / target

    def selections(self) -> list[Path]:
        return sorted((self.root / "select").glob("*.json"))

    def compiled_dirs(self) -> list[Path]:
        return sorted(p.parent for p in (self.root / "compiled").glob(f"*/{COMPILE_SUMMARY}"))

    @classmethod
    def of_compiled(cls, compiled_dir: str | os.PathLike) -> "Layout | None":
        """The job folder that holds ``compiled_dir`` as ``compiled/<T>``, if it is one."""
        compiled_dir = Path(compiled_dir)
        return cls(compiled_dir.parent.parent) if compiled_dir.parent.name == "compiled" else None

    @classmethod
    def of_export(cls, export_dir: str | os.PathLike) -> "Layout":
        return cls(Path(export_dir).parent)


def _beside(compiled_dir: str | os.PathLike, kind: str, name: str) -> Path:
    job = Layout.of_compiled(compiled_dir)
    return (job.root if job else Path(compiled_dir)) / kind / name


def default_store_path(compiled_dir: str | os.PathLike, target: str) -> Path:
    """OUT/compiled/<T>/ -> OUT/profiles/<T>.jsonl; else COMPILED_DIR/profiles/<T>.jsonl."""
    return _beside(compiled_dir, "profiles", f"{target}.jsonl")


def default_select_path(compiled_dir: str | os.PathLike, target: str) -> Path:
    return _beside(compiled_dir, "select", f"{target}.json")


def default_accuracy_path(compiled_dir: str | os.PathLike, target: str) -> Path:
    return _beside(compiled_dir, "accuracy", f"{target}.jsonl")


def default_bundle_dir(compiled_dir: str | os.PathLike, target: str) -> Path:
    return _beside(compiled_dir, "bundle", target)


def default_compiled_dir(export_dir: str | os.PathLike, target: str) -> Path:
    return Layout.of_export(export_dir).compiled_dir(target)


def _beside_store(store_path: str | os.PathLike, kind: str) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name.removesuffix('.jsonl')}.{kind}.json")


def predictions_path(store_path: str | os.PathLike) -> Path:
    """The predictor's file sits beside the profile store it was fitted on."""
    return _beside_store(store_path, "predictions")


def tune_path(store_path: str | os.PathLike) -> Path:
    """``profile --tune``'s candidates and choice, beside the store they were measured into."""
    return _beside_store(store_path, "tune")


# ---- field checks ---------------------------------------------------------------------------
class _Check(Fields):
    """The shared field getters (esta_export.validation) with what stage files add: optional
    values (``none=True``), paths confined to the stage folder, and the schema line."""

    def __init__(self, path: str | os.PathLike, what: str, fix: str) -> None:
        super().__init__(f"{path}: {what}", FormatError, hint=fix)

    def bad(self, field: str, problem: str, fix: str | None = None):
        err = self.fail(field, problem)
        if fix is not None:
            err = FormatError(err.message, hint=fix)
        raise err

    def str(self, v: Any, field: str, *, none: bool = False,  # type: ignore[override]
            choices: Sequence[str] | None = None) -> str | None:
        if v is None and none:
            return None
        if choices is not None:
            return self.enum(v, field, choices)
        return super().str(v, field, nonempty=True)

    def int(self, v: Any, field: str, *, lo: int = 0, none: bool = False  # type: ignore[override]
            ) -> int | None:
        return None if v is None and none else super().int(v, field, lo)

    def num(self, v: Any, field: str, *, lo: float | None = None, hi: float | None = None,  # type: ignore[override]
            none: bool = False, positive: bool = False) -> float | None:
        if v is None and none:
            return None
        return super().num(v, field, -math.inf if lo is None else lo, math.inf if hi is None else hi,
                           positive=positive)

    def bool(self, v: Any, field: str, *, none: bool = False) -> bool | None:  # type: ignore[override]
        return None if v is None and none else super().bool(v, field)

    def sha(self, v: Any, field: str, *, none: bool = False) -> str | None:
        return None if v is None and none else self.sha256(v, field)

    def relpath(self, v: Any, field: str) -> str:
        self.str(v, field)
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or "\\" in v or "\0" in v:
            self.bad(field, f"is {v!r}: must be a path inside the stage folder (relative, no '..')")
        return v

    def schema(self, doc: dict, schema: str) -> None:
        if doc.get("schema") != schema:
            self.bad("schema", f"is {doc.get('schema')!r}, not {schema!r} (not a file this "
                     "stage wrote)")
        version = doc.get("schema_version", "0")
        major = str(version).split(".")[0]
        if not isinstance(version, str) or not major.isdigit():
            self.bad("schema_version", f"is {version!r}, not a version like '1.0'")
        if int(major) > _MAJOR:
            self.bad("schema_version", f"is {version}, newer than this esta-export reads "
                     f"({SCHEMA_VERSION})", "upgrade esta-export or re-run the stage")


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _load(path: Path, what: str, fix: str) -> Any:
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{what} not found: {path}", hint=fix)
    # A regular file of a size a stage writes (FIFOs and devices refused before opening, issue 16).
    # NaN/Infinity parse here so the field checks can name the field; _nan_free catches the rest.
    from .fsutil import MAX_JSON_BYTES, check_input_file
    check_input_file(path, what, max_bytes=MAX_JSON_BYTES, error=FormatError, hint=fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError, OSError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise FormatError(f"{what} {path} is not valid JSON ({reason})", hint=fix) from None


def _nan_free(obj: Any, where: str, fix: str) -> Any:
    """JSON as we write it: json.dumps would write NaN/Infinity, which no stage may publish."""
    def walk(v: Any, at: str) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise FormatError(f"{where}: field {at!r} is {v}, not a finite number", hint=fix)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{at}.{k}" if at else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{at}[{i}]")
    walk(obj, "")
    return obj


def _write(path: str | os.PathLike, doc: dict, fix: str) -> Path:
    from .fsutil import atomic_write_json
    path = Path(path)
    atomic_write_json(path, _nan_free(_jsonable(doc), str(path), fix))
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):   # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---- export.json ----------------------------------------------------------------------------
_EXPORT_FIX = "re-run 'esta-export export' (with --fresh) to rewrite it"


def check_export(doc: Any, path: str | os.PathLike, *, need_stitches: bool = True
                 ) -> dict[str, Any]:
    c = _Check(path, "export summary", _EXPORT_FIX)
    doc = c.obj(doc, "(top level)")
    c.schema(doc, EXPORT_SCHEMA)
    sn = c.obj(doc.get("supernet", {}), "supernet")
    c.sha(sn.get("sha256"), "supernet.sha256", none=True)
    inp = c.obj(doc.get("input", {}), "input")
    shape = inp.get("shape")
    if shape is not None:
        c.list(shape, "input.shape")
        if len(shape) != 4:
            c.bad("input.shape", f"has {len(shape)} dimensions, not 4 (batch, 3, H, W)")
        for i, d in enumerate(shape[1:], 1):
            c.int(d, f"input.shape[{i}]", lo=1)
    for key in ("mean", "std"):
        if inp.get(key) is not None:
            vals = c.list(inp[key], f"input.{key}")
            for i, v in enumerate(vals):
                c.num(v, f"input.{key}[{i}]", positive=key == "std")
    out = c.obj(doc.get("output", {}), "output")
    classes = c.int(out.get("num_classes"), "output.num_classes", lo=1, none=True)
    labels = inp.get("labels")
    if labels is not None:
        c.list(labels, "input.labels")
        if not all(isinstance(x, str) for x in labels):
            c.bad("input.labels", "must be a list of strings")
        if classes is not None and len(labels) != classes:
            c.bad("input.labels", f"has {len(labels)} names but output.num_classes is {classes}")
    c.int(doc.get("opset"), "opset", lo=1, none=True)
    if doc.get("weights") is not None:
        c.relpath(doc["weights"], "weights")
    stitches = c.list(doc.get("stitches"), "stitches")
    if not stitches and need_stitches:
        raise InputError(f"{path} lists no exported stitches",
                         hint="re-run the export (its 'failed' list says why)")
    seen: set[int] = set()
    for n, s in enumerate(stitches):
        f = f"stitches[{n}]"
        c.obj(s, f)
        sid = c.int(s.get("id"), f"{f}.id", lo=0)
        if sid in seen:
            c.bad(f"{f}.id", f"repeats stitch id {sid}")
        seen.add(sid)
        c.relpath(s.get("onnx"), f"{f}.onnx")
        c.str(s.get("route"), f"{f}.route", none=True)
        c.int(s.get("flops"), f"{f}.flops", lo=0, none=True)
        c.int(s.get("params"), f"{f}.params", lo=0, none=True)
        c.num(s.get("accuracy"), f"{f}.accuracy", lo=0.0, hi=100.0, none=True)
        for key in ("max_abs_error", "slice_max_abs_error"):
            c.num(s.get(key), f"{f}.{key}", lo=0.0, none=True)
        if s.get("segments") is not None:
            for i, seg in enumerate(c.list(s["segments"], f"{f}.segments")):
                if not (isinstance(seg, list) and len(seg) == 3):
                    c.bad(f"{f}.segments[{i}]", "must be [anchor, first block, last block]")
                for j, v in enumerate(seg):
                    c.int(v, f"{f}.segments[{i}][{j}]", lo=0)
    for n, fl in enumerate(c.list(doc.get("failed", []), "failed")):
        c.obj(fl, f"failed[{n}]")
    return doc


def read_export(export_dir: str | os.PathLike) -> dict[str, Any]:
    """``export_dir/export.json`` (or that file itself), checked."""
    export_dir = Path(export_dir)
    if export_dir.is_file() and export_dir.name == EXPORT_SUMMARY:
        export_dir = export_dir.parent
    if not export_dir.is_dir():
        raise InputError(f"export folder not found: {export_dir}",
                         hint="give the folder written by 'esta-export export' (holds export.json)")
    path = export_dir / EXPORT_SUMMARY
    doc = check_export(_load(path, "export summary", "give the folder written by 'esta-export "
                                                     "export' (holds export.json)"), path)
    return _nan_free(doc, str(path), _EXPORT_FIX)


def write_export(export_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Write export.json (last: its presence means the export finished), checked first."""
    path = Path(export_dir) / EXPORT_SUMMARY
    doc = _jsonable(summary)
    check_export(doc, path, need_stitches=False)
    return _write(path, doc, _EXPORT_FIX)


# ---- compile.json ---------------------------------------------------------------------------
_COMPILE_FIX = "re-run 'esta-export compile --fresh' to rewrite it"


def check_compile(doc: Any, path: str | os.PathLike) -> dict[str, Any]:
    c = _Check(path, "compile summary", _COMPILE_FIX)
    doc = c.obj(doc, "(top level)")
    c.schema(doc, COMPILE_SCHEMA)
    c.str(doc.get("target"), "target")
    c.str(doc.get("backend"), "backend")
    c.str(doc.get("precision"), "precision", none=True)
    for key in ("engines_built", "device_build_required"):
        c.bool(doc.get(key), key, none=True)
    if not isinstance(doc.get("verified_on_hardware"), (bool, str, type(None))):
        c.bad("verified_on_hardware", "must be true, false or where it was verified")
    if doc.get("export") is not None:
        c.str(doc["export"], "export")
    c.sha(doc.get("supernet_sha256"), "supernet_sha256", none=True)
    if doc.get("reference") is not None:
        c.relpath(doc["reference"], "reference")
    seen: set[int] = set()
    for n, a in enumerate(c.list(doc.get("artifacts", []), "artifacts")):
        f = f"artifacts[{n}]"
        c.obj(a, f)
        sid = c.int(a.get("id"), f"{f}.id", lo=0)
        if sid in seen:
            c.bad(f"{f}.id", f"repeats stitch id {sid}")
        seen.add(sid)
        c.relpath(a.get("path"), f"{f}.path")
        c.sha(a.get("sha256"), f"{f}.sha256", none=True)
        c.sha(a.get("source_sha256"), f"{f}.source_sha256", none=True)
        if a.get("sha256") is None and a.get("source_sha256") is None:
            c.bad(f"{f}.sha256", "is missing (and so is source_sha256): the artifact has no key")
        for rel in c.obj(a.get("files", {}), f"{f}.files"):
            c.relpath(rel, f"{f}.files")
        v = a.get("validation")
        if v is not None:
            c.obj(v, f"{f}.validation")
            c.bool(v.get("passed"), f"{f}.validation.passed", none=True)
        c.int(a.get("flops"), f"{f}.flops", lo=0, none=True)
        c.int(a.get("params"), f"{f}.params", lo=0, none=True)
    for n, fl in enumerate(c.list(doc.get("failed", []), "failed")):
        c.obj(fl, f"failed[{n}]")
        c.int(fl.get("id"), f"failed[{n}].id", lo=0)
    return doc


def read_compile(compiled_dir: str | os.PathLike) -> dict[str, Any]:
    """``compiled_dir/compile.json``, checked."""
    compiled_dir = Path(compiled_dir)
    if not compiled_dir.is_dir():
        raise InputError(f"compiled folder not found: {compiled_dir}",
                         hint="run 'esta-export compile' first and pass its output folder")
    path = compiled_dir / COMPILE_SUMMARY
    doc = check_compile(_load(path, "compile summary", "run 'esta-export compile' first and "
                                                       "pass its output folder"), path)
    return _nan_free(doc, str(path), _COMPILE_FIX)


def write_compile(compiled_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    path = Path(compiled_dir) / COMPILE_SUMMARY
    check_compile(_jsonable(summary), path)
    return _write(path, summary, _COMPILE_FIX)


def export_dir_of(compiled_dir: str | os.PathLike, comp: dict[str, Any]) -> Path | None:
    """The export folder compile.json names (relative to the compiled folder)."""
    if not comp.get("export"):
        return None
    p = Path(comp["export"])
    p = p if p.is_absolute() else Path(compiled_dir) / p
    return p.parent if p.name == EXPORT_SUMMARY else p


def read_compiled(compiled_dir: str | os.PathLike
                  ) -> tuple[dict[str, Any], dict[str, Any] | None, Path]:
    """compile.json, the export.json it names (None if gone) and the export folder, checked
    against each other: the export is the one compiled (supernet hash) and holds every stitch."""
    compiled_dir = Path(compiled_dir)
    comp = read_compile(compiled_dir)
    export, export_dir = None, compiled_dir
    found = export_dir_of(compiled_dir, comp)
    if found is not None:
        export_dir = found
        if (found / EXPORT_SUMMARY).is_file():
            export = read_export(found)
    if export is not None:
        check_compiled_matches_export(comp, export, compiled_dir / COMPILE_SUMMARY,
                                      export_dir / EXPORT_SUMMARY)
    return comp, export, export_dir


def check_compiled_matches_export(comp: dict, export: dict, comp_path: Path | str,
                                  export_path: Path | str) -> None:
    want = comp.get("supernet_sha256")
    have = (export.get("supernet") or {}).get("sha256")
    if want and have and want != have:
        raise FormatError(f"{comp_path}: field 'supernet_sha256' does not match {export_path} "
                          f"(compiled from another supernet)",
                          hint="re-run 'esta-export compile --fresh' on this export")
    exported = {s["id"] for s in export["stitches"]}
    stray = sorted(a["id"] for a in comp.get("artifacts", []) if a["id"] not in exported)
    if stray:
        raise FormatError(f"{comp_path}: field 'artifacts' has stitches {stray[:10]} that "
                          f"{export_path} does not list",
                          hint="re-run 'esta-export compile --fresh' on this export")


def stitch_table(comp: dict[str, Any], export: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per compiled artifact, enriched with the export's segments, FLOPs and accuracy."""
    by_id = {s["id"]: s for s in (export or {}).get("stitches", [])}
    rows = []
    for art in comp.get("artifacts", []):
        ex = by_id.get(art.get("id"), {})
        rows.append({
            "id": art.get("id"), "route": art.get("route") or ex.get("route"),
            "path": art.get("path"), "sha256": art.get("sha256") or art.get("source_sha256"),
            "segments": ex.get("segments"), "flops": art.get("flops", ex.get("flops")),
            "params": art.get("params", ex.get("params")), "accuracy": ex.get("accuracy"),
            "accuracy_source": ex.get("accuracy_source"),
        })
    return rows


def input_shape_for(export: dict[str, Any] | None, comp: dict[str, Any], batch: int) -> list[int]:
    """The stitches' input shape at ``batch`` (export.json's input, else compile.json's)."""
    from .errors import ProfileError
    shape = ((export or {}).get("input") or {}).get("shape") or comp.get("input_shape")
    if not shape:
        raise ProfileError("the export summary gives no input shape",
                           hint="re-run 'esta-export export' (its export.json records it)")
    return [batch] + [int(d) for d in shape[1:]]


# ---- select/<T>.json ------------------------------------------------------------------------
_SELECT_FIX = "re-run 'esta-export select' to rewrite it"


def check_selection(doc: Any, path: str | os.PathLike, target: str | None = None
                    ) -> dict[str, Any]:
    c = _Check(path, "selection", _SELECT_FIX)
    doc = c.obj(doc, "(top level)")
    c.schema(doc, SELECTION_SCHEMA)
    name = c.str(doc.get("target"), "target")
    if target is not None and name != target:
        c.bad("target", f"is {name!r}, not {target!r}",
               f"pass the selection of {target} (select/{target}.json)")
    c.int(doc.get("batch", 1), "batch", lo=1)
    c.str(doc.get("mode", "pareto"), "mode", choices=("pareto", "latency-only"))
    ids: set[int] = set()
    for n, s in enumerate(c.list(doc.get("stitches"), "stitches")):
        f = f"stitches[{n}]"
        c.obj(s, f)
        sid = c.int(s.get("id"), f"{f}.id", lo=0)
        if sid in ids:
            c.bad(f"{f}.id", f"repeats stitch id {sid}")
        ids.add(sid)
        src = c.str(s.get("latency_source"), f"{f}.latency_source", none=True,
                    choices=("measured", "predicted"))
        lat = c.num(s.get("latency"), f"{f}.latency", positive=True, none=True)
        if (lat is None) != (src is None):
            c.bad(f"{f}.latency", "and latency_source must both be set or both be null")
        if s.get("latency_ms") is not None:
            for k, v in c.obj(s["latency_ms"], f"{f}.latency_ms").items():
                if not isinstance(v, (dict, list, str, type(None))):
                    c.num(v, f"{f}.latency_ms.{k}")
        c.num(s.get("accuracy"), f"{f}.accuracy", lo=0.0, hi=100.0, none=True)
        c.int(s.get("flops"), f"{f}.flops", lo=0, none=True)
        c.num(s.get("peak_rss_mb"), f"{f}.peak_rss_mb", lo=0.0, none=True)
        c.bool(s.get("unstable", False), f"{f}.unstable")
        c.sha(s.get("artifact_sha256"), f"{f}.artifact_sha256", none=True)
    for key in ("selected", "front"):
        for n, sid in enumerate(c.list(doc.get(key, []), key)):
            c.int(sid, f"{key}[{n}]", lo=0)
            if sid not in ids:
                c.bad(f"{key}[{n}]", f"names stitch {sid}, which 'stitches' does not list")
    c.num(doc.get("kendall_tau"), "kendall_tau", lo=-1.0, hi=1.0, none=True)
    warnings = c.list(doc.get("warnings", []), "warnings")
    if not all(isinstance(w, str) for w in warnings):
        c.bad("warnings", "must be a list of strings")
    for key in ("env", "predictor", "constraints"):
        if doc.get(key) is not None:
            c.obj(doc[key], key)
    return doc


def read_selection(path: str | os.PathLike, target: str | None = None) -> dict[str, Any]:
    path = Path(path)
    doc = check_selection(_load(path, "selection", "run 'esta-export select COMPILED_DIR "
                                                   "--target T' first"), path, target)
    return _nan_free(doc, str(path), _SELECT_FIX)


def write_selection(path: str | os.PathLike, selection: dict[str, Any]) -> Path:
    path = Path(path)
    doc = _jsonable(selection)
    check_selection(doc, path)   # what we write, we can read back
    return _write(path, doc, _SELECT_FIX)


# ---- profile records ------------------------------------------------------------------------
def check_profile_record(rec: dict[str, Any]) -> str | None:
    """Why a measured record cannot be used downstream (None when it can). Reading is tolerant:
    the store is append-only, so a bad record is skipped with this reason, never published."""
    try:
        c = _Check("record", "profile record", "")
        c.sha(rec.get("artifact_sha256"), "artifact_sha256")
        c.str(rec.get("target"), "target")
        c.int(rec.get("batch", 1), "batch", lo=1)
        lat = c.obj(rec.get("latency_ms"), "latency_ms")
        c.num(lat.get("median"), "latency_ms.median", positive=True)
        for k, v in lat.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                c.num(v, f"latency_ms.{k}")
        if rec.get("compute_ms") is not None:
            comp = c.obj(rec["compute_ms"], "compute_ms")
            c.num(comp.get("median"), "compute_ms.median", positive=True)
        c.bool(rec.get("unstable", False), "unstable")
        c.num(rec.get("peak_rss_mb"), "peak_rss_mb", lo=0.0, none=True)
        c.str(rec.get("env_hash"), "env_hash", none=True)
        _nan_free(rec, "record", "")       # NaN in a field not checked above is not published either
    except FormatError as err:
        return err.message.removeprefix("record: profile record: ")
    return None


@dataclass
class ProfileRecords:
    """The measured records of one store for one target (and batch), newest per artifact."""

    path: Path
    latest: dict[str, dict[str, Any]]
    warnings: list[str]
    every: list[dict[str, Any]] = field(default_factory=list)   # all usable ones, oldest first


def read_profile_records(path: str | os.PathLike, target: str | None = None,
                         batch: int | None = None) -> ProfileRecords:
    """Every usable measured record (through the store's lock and schema check)."""
    from .profiling.store import ProfileStore

    store = ProfileStore(path)
    latest: dict[str, dict[str, Any]] = {}
    every: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n, rec in enumerate(store.records()):
        if not rec.get("measured", True):
            continue
        if target is not None and rec.get("target") != target:
            continue
        if batch is not None and rec.get("batch", 1) != batch:
            continue
        why = check_profile_record(rec)
        if why is not None:
            skipped.append(f"{store.path}: skipped record {n + 1} of stitch "
                           f"{rec.get('stitch_id')!r}: {why}; profile it again")
            continue
        latest[rec["artifact_sha256"]] = rec
        every.append(rec)
    return ProfileRecords(store.path, latest, store.warnings + skipped, every)


# ---- predictions (written by profile, read by select) ---------------------------------------
_PRED_FIX = "re-run 'esta-export profile' to rewrite it (or delete it)"


def write_predictions(store_path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """The predictor profile fitted and its predictions, keyed by artifact sha256."""
    path = predictions_path(store_path)
    doc = _jsonable({"schema": PREDICTIONS_SCHEMA, "schema_version": SCHEMA_VERSION, **doc})
    check_predictions(doc, path)
    return _write(path, doc, _PRED_FIX)


def check_predictions(doc: Any, path: str | os.PathLike) -> dict[str, Any]:
    c = _Check(path, "predictions", _PRED_FIX)
    doc = c.obj(doc, "(top level)")
    c.schema(doc, PREDICTIONS_SCHEMA)
    c.str(doc.get("target"), "target")
    c.int(doc.get("batch"), "batch", lo=1)
    for key in ("fitted_on", "predicted"):
        for sha, ms in c.obj(doc.get(key), key).items():
            c.sha(sha, f"{key} key")
            c.num(ms, f"{key}.{sha[:12]}", positive=True)
    for sha in c.list(doc.get("extrapolated", []), "extrapolated"):
        c.sha(sha, "extrapolated[]")
    c.obj(doc.get("predictor"), "predictor")
    return doc


def read_predictions(store_path: str | os.PathLike, target: str, batch: int
                     ) -> dict[str, Any] | None:
    """The predictions of ``target`` at ``batch`` beside this store, or None if there are none."""
    path = predictions_path(store_path)
    if not path.is_file():
        return None
    doc = check_predictions(_load(path, "predictions", _PRED_FIX), path)
    if doc["target"] != target or doc["batch"] != batch:
        return None
    return doc


# ---- accuracy records -----------------------------------------------------------------------
class AccuracyStore:
    """``accuracy/<T>.jsonl``: top-1 of one compiled artifact on one data file, keyed by the
    artifact's sha256 and the data's sha256; append-only, locked like the profile store."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []

    @contextlib.contextmanager
    def _locked(self, mode: str, lock: int):
        with locked_file(self.path, mode, lock) as f:
            yield f

    @staticmethod
    def check(rec: Any, where: str) -> dict[str, Any]:
        c = _Check(where, "accuracy record", "delete the line (or the file) and run "
                                             "'esta-export select --val-data' again")
        c.obj(rec, "(record)")
        c.schema(rec, ACCURACY_SCHEMA)
        c.sha(rec.get("artifact_sha256"), "artifact_sha256")
        c.sha(rec.get("data_sha256"), "data_sha256")
        c.int(rec.get("stitch_id"), "stitch_id", lo=0)
        c.num(rec.get("accuracy"), "accuracy", lo=0.0, hi=1.0)
        c.int(rec.get("n"), "n", lo=1)
        c.str(rec.get("source"), "source")
        return rec

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self._locked("r", fcntl.LOCK_SH) as f:
            lines = f.read().split("\n")
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(self.check(json.loads(line), f"{self.path}:{n}"))
            except (ValueError, RecursionError, FormatError) as err:
                self.warnings.append(f"{self.path}:{n}: skipped an unreadable accuracy record "
                                     f"({getattr(err, 'message', err)}); it is measured again")
        return out

    def lookup(self, data_sha256: str) -> dict[str, dict[str, Any]]:
        """artifact sha256 -> newest record on this data."""
        return {r["artifact_sha256"]: r for r in self.records() if r["data_sha256"] == data_sha256}

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        from .profiling.store import now_iso
        lines = []
        for rec in records:
            rec = {"schema": ACCURACY_SCHEMA, "schema_version": SCHEMA_VERSION, "time": now_iso(),
                   **_jsonable(rec)}
            self.check(rec, f"{self.path} (record to append)")
            lines.append(json.dumps(rec))
        return append_json_lines(self.path, lines)
