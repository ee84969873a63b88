"""Bundle manifest: schema name, version, and the reader that refuses what it cannot understand.

The writer (``esta_export.bundle.manifest``) and the device runtime share these constants, so a
bundle and its runtime agree on one definition. Minor versions add optional fields (readers ignore
unknown keys); a new major version changes meaning, so an older reader refuses it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import BundleError, ManifestVersionError

SCHEMA = "esta-export/bundle"
SCHEMA_VERSION = "1.0"
MANIFEST = "manifest.json"


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise BundleError(f"manifest schema_version {version!r} is not MAJOR.MINOR",
                          hint="re-create the bundle with esta-export bundle") from None


def check_manifest(manifest: Any, where: str = MANIFEST) -> dict:
    """Return ``manifest`` if this runtime can read it; raise a one-line error otherwise."""
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not an esta-export bundle manifest (schema "
                          f"{manifest.get('schema') if isinstance(manifest, dict) else None!r})",
                          hint="point to the folder 'esta-export bundle' wrote")
    found = manifest.get("schema_version", "")
    if _major(found) > _major(SCHEMA_VERSION):
        raise ManifestVersionError(
            f"{where} has schema_version {found}, newer than this runtime reads ({SCHEMA_VERSION})",
            hint="update the runtime (copy esta_runtime from a newer bundle or upgrade esta-export)")
    for key in ("stitches", "files", "input"):
        if key not in manifest:
            raise BundleError(f"{where} lacks '{key}'", hint="re-create the bundle with esta-export bundle")
    _check_fields(manifest, where)
    return manifest


# -- field checks (the runtime ships without esta-export: its own small checker) --------------------
_HEX = frozenset("0123456789abcdef")
_STATS = ("median", "mean", "min", "max", "p50", "p90", "p95", "p99", "std", "mad", "iqr", "switch_in_ms",
          "ci_low", "ci_high", "median_low", "median_high")
MAX_ITEMS = 1 << 20


class _Fields:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, msg: str) -> BundleError:
        return BundleError(f"{self.where}: field '{field}' {msg}",
                           hint="the manifest was edited or damaged; re-create the bundle with esta-export bundle")

    def obj(self, v: Any, field: str) -> dict:
        if not isinstance(v, dict):
            raise self.fail(field, f"must be an object, got {_kind(v)}")
        return v

    def list(self, v: Any, field: str, lo: int = 0) -> list:
        if not isinstance(v, list) or not lo <= len(v) <= MAX_ITEMS:
            raise self.fail(field, f"must be a list of at least {lo} item(s), got {_kind(v)}"
                            + (" with none" if isinstance(v, list) else ""))
        return v

    def int(self, v: Any, field: str, lo: int = 0, hi: int = 1 << 62) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(field, f"must be an integer in [{lo}, {hi}], got {_show(v)}")
        return v

    def num(self, v: Any, field: str, lo: float = -math.inf, hi: float = math.inf, positive: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi \
                or (positive and v <= 0):
            raise self.fail(field, f"must be a finite number{' > 0' if positive else ''}"
                            f"{'' if lo == -math.inf else f' >= {lo:g}'}, got {_show(v)}")
        return float(v)

    def str(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or not v or len(v) > 4096:
            raise self.fail(field, f"must be a non-empty string, got {_show(v)}")
        return v

    def sha(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or len(v) != 64 or not set(v) <= _HEX:
            raise self.fail(field, f"must be a sha256 (64 hex digits), got {_show(v)}")
        return v


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    return _kind(v) if isinstance(v, (dict, list)) else repr(v)[:60]


def _check_fields(m: dict, where: str) -> None:
    """Every field the runtime reads: a hand-edited manifest ends in one line, never a traceback."""
    f = _Fields(where)
    inp = f.obj(m["input"], "input")
    size = inp.get("image_size")
    if size is None and isinstance(inp.get("shape"), list) and inp["shape"]:
        size = inp["shape"][-1]
    if isinstance(size, list):
        if len(size) != 2:
            raise f.fail("input.image_size", f"must be an integer or [height, width], got {_show(size)}")
        for i, v in enumerate(size):
            f.int(v, f"input.image_size[{i}]", 1, 16384)
    else:
        f.int(size, "input.image_size", 1, 16384)
    if inp.get("name") is not None:
        f.str(inp["name"], "input.name")
    chans = None
    for key, positive in (("mean", False), ("std", True)):
        if inp.get(key) is not None:
            vals = f.list(inp[key], f"input.{key}", 1)
            if len(vals) > 64:
                raise f.fail(f"input.{key}", "has more than 64 values")
            for i, v in enumerate(vals):
                f.num(v, f"input.{key}[{i}]", positive=positive)
            chans = len(vals) if chans is None else chans
            if len(vals) != chans:
                raise f.fail("input.std", "must have as many values as input.mean")
    shape = inp.get("shape")
    if shape is not None:
        f.list(shape, "input.shape", 4)
        if len(shape) != 4:
            raise f.fail("input.shape", f"must be [batch, C, H, W], got {len(shape)} dimensions")
        for i, v in enumerate(shape[1:], 1):
            f.int(v, f"input.shape[{i}]", 1, 16384)
    if inp.get("resize") is not None and inp["resize"] not in ("bilinear", "nearest"):
        raise f.fail("input.resize", f"must be 'bilinear' or 'nearest', got {_show(inp['resize'])}")
    labels = inp.get("labels")
    if labels is not None:
        for i, v in enumerate(f.list(labels, "input.labels", 1)):
            if not isinstance(v, str):
                raise f.fail(f"input.labels[{i}]", f"must be a string, got {_show(v)}")
    out = m.get("output")
    if out is not None:
        f.obj(out, "output")
        if out.get("num_classes") is not None:
            n = f.int(out["num_classes"], "output.num_classes", 1, 10_000_000)
            if labels is not None and len(labels) != n:
                raise f.fail("input.labels", f"has {len(labels)} labels for output.num_classes = {n}")
    ids = set()
    for i, s in enumerate(f.list(m["stitches"], "stitches", 1)):
        p = f"stitches[{i}]"
        f.obj(s, p)
        sid = f.int(s.get("id"), f"{p}.id", 0, 1 << 31)
        if sid in ids:
            raise f.fail(f"{p}.id", f"repeats stitch id {sid}")
        ids.add(sid)
        if s.get("route") is not None and not isinstance(s["route"], str):
            raise f.fail(f"{p}.route", f"must be a string, got {_show(s['route'])}")
        lat = s.get("latency")
        if lat is not None:
            f.obj(lat, f"{p}.latency")
            for k in _STATS:
                if lat.get(k) is not None:
                    f.num(lat[k], f"{p}.latency.{k}", lo=0.0)
            if lat.get("source") is not None and not isinstance(lat["source"], str):
                raise f.fail(f"{p}.latency.source", f"must be a string, got {_show(lat['source'])}")
        if s.get("accuracy") is not None:
            f.num(s["accuracy"], f"{p}.accuracy", 0.0, 100.0)
        for k in ("flops", "params"):
            if s.get(k) is not None:
                f.int(s[k], f"{p}.{k}")
        art = f.obj(s.get("artifact"), f"{p}.artifact")
        f.str(art.get("path"), f"{p}.artifact.path")
        f.sha(art.get("sha256"), f"{p}.artifact.sha256")
        if art.get("format") is not None:
            f.str(art["format"], f"{p}.artifact.format")
        if s.get("engine") is not None:
            f.str(f.obj(s["engine"], f"{p}.engine").get("path"), f"{p}.engine.path")
    for i, e in enumerate(f.list(m["files"], "files")):
        p = f"files[{i}]"
        f.obj(e, p)
        f.str(e.get("path"), f"{p}.path")
        f.sha(e.get("sha256"), f"{p}.sha256")
        if e.get("size") is not None:
            f.int(e["size"], f"{p}.size")
    w = m.get("weights")
    if w is not None:
        f.obj(w, "weights")
        if w.get("format") == "openvino-ir":  # the IRs' one shared .bin: no tensor index
            f.str(w.get("file"), "weights.file")
        elif w.get("index") is not None or w.get("file") is not None:
            f.str(w.get("index"), "weights.index")
            f.str(w.get("file"), "weights.file")
    for key in ("target", "session", "supernet", "selection"):
        if m.get(key) is not None:
            f.obj(m[key], key)
    t = m.get("target") or {}
    if t.get("name") is not None:
        f.str(t["name"], "target.name")
    sess = m.get("session") or {}
    if sess.get("threads") is not None:
        f.int(sess["threads"], "session.threads", 0, 1024)
    if sess.get("performance_hint") is not None and sess["performance_hint"] not in ("LATENCY", "THROUGHPUT"):
        raise f.fail("session.performance_hint", "must be LATENCY or THROUGHPUT")
    for key in ("cpu_pinning", "share_weights", "intra_op_spinning"):
        if sess.get(key) is not None and not isinstance(sess[key], bool):
            raise f.fail(f"session.{key}", "must be true or false")
    for i, e in enumerate(m.get("excluded") or []):
        f.obj(e, f"excluded[{i}]")


MAX_MANIFEST_BYTES = 64 << 20


def read_json_file(path: Path, what: str, max_bytes: int = MAX_MANIFEST_BYTES) -> Any:
    """A JSON file of the bundle: a regular file of sane size, valid JSON, no NaN/Infinity."""
    import stat

    try:
        st = os.stat(path)
    except OSError as err:
        raise BundleError(f"cannot read {what} {path} ({err.strerror})", hint="re-copy the complete bundle") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{what} {path} is not a regular file", hint="re-copy the bundle without special files")
    if st.st_size > max_bytes:
        raise BundleError(f"{what} {path} is {st.st_size / 1e6:.0f} MB, larger than a bundle writes",
                          hint="re-create or re-copy the bundle")
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).split())[:160]
        raise BundleError(f"{path} is not valid JSON ({reason})",
                          hint="re-create or re-copy the bundle") from None
    except OSError as err:
        raise BundleError(f"cannot read {what} {path} ({err.strerror})", hint="re-copy the complete bundle") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def load_manifest(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST} in {bundle_dir}",
                          hint="the bundle is incomplete or this is not a bundle folder")
    return check_manifest(read_json_file(path, "bundle manifest"), str(path))
