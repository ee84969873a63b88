"""Export stage: every selected stitch -> validated ONNX graph, all weights stored once.

Output folder (see docs/stages.md):
    export.json             written last: its presence means the export finished
    weights.bin             every unique tensor of the family, once (ONNX shared external data)
    weights.index.json      content hash -> (offset, length), for resuming and dedup
    stitch_<id>.onnx        graph pointing into weights.bin (load it by path)
    stitch_<id>.json        the stitch's record, written once its graph validated

Validation (TARGETS.md tiers 1 and 2): the slice against the supernet at that stitch, then ONNX
Runtime against the slice, both fp32 on seeded random inputs at batch 2 (which also exercises the
dynamic batch axis). A stitch that fails is recorded with its reason and left out.

Resuming: a re-run with the same supernet and settings reuses every stitch whose record and graph
are intact, and redoes the rest; the weight store is truncated back to its last committed size, so
a crash mid-write never leaves garbage that a later graph could point into.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto

from . import __version__
from .errors import ExportError, InputError, StitchError, ValidationError
from .flops import stitch_flops, stitch_params
from .ids import parse_id_list
from .fsutil import (atomic_path, atomic_write_bytes, atomic_write_json, check_free_space, check_not_input,
                     check_out_dir,
                     output_lock, prepare_out_dir, read_json, sha256_file, stage_output)
from .onnx_graph import INPUT_NAME, LAYERNORM_MODES, MAX_OPSET, MIN_OPSET, OUTPUT_NAME, build_stitch_graph
from .slicing import StitchModel, slice_stitch
from .supernet.formats import LoadedSupernet

SCHEMA = "esta-export/export"
SCHEMA_VERSION = "1.0"
WEIGHTS_FILE = "weights.bin"
INDEX_FILE = "weights.index.json"
DEFAULT_OPSET = 17
TIER1_RTOL = 1e-5     # slice vs supernet: the same fp32 maths, only LoRA merging reorders sums
TIER2_RTOL = 1e-4     # ONNX Runtime vs slice: different kernels, fp32
VALIDATION_BATCH = 2  # ONNX Runtime runs batch 2 (the dynamic axis); PyTorch references run row 0
ALIGN = 64            # bytes; keeps every tensor SIMD-aligned when memory-mapped


# -- stitch selection -----------------------------------------------------------------------------
def parse_stitch_selection(text: str | None, valid_ids: Sequence[int]) -> list[int]:
    """``all`` or ``0,3,10-20`` -> sorted ids; unknown ids are a StitchError naming them."""
    valid = list(valid_ids)
    chosen = parse_id_list(text)
    if chosen is None:
        return valid
    unknown = sorted(set(chosen) - set(valid))
    if unknown:
        shown = ",".join(map(str, unknown[:8])) + ("..." if len(unknown) > 8 else "")
        raise StitchError(f"unknown stitch id(s) {shown}: this supernet has {len(valid)} stitches with ids "
                          f"{valid[0]}..{valid[-1]}", hint="see 'esta-export inspect' for the ids")
    return chosen


# -- the shared weight store ----------------------------------------------------------------------
class WeightStore:
    """Append-only, content-addressed tensor file with a committed index (crash-safe)."""

    def __init__(self, folder: Path, key: str, stable_ptrs: frozenset[int] = frozenset()) -> None:
        self.folder = folder
        # Arrays that view a tensor living for the whole export (the supernet's own parameters,
        # shared into every slice) are hashed once; anything else (merged LoRA weights, freshly
        # allocated arrays whose address may be reused) is hashed every time.
        self._stable = stable_ptrs
        self._memo: dict[tuple, tuple[int, int]] = {}
        self.path = folder / WEIGHTS_FILE
        self.index_path = folder / INDEX_FILE
        self.key = key
        self.tensors: dict[str, tuple[int, int]] = {}
        end = 0
        if self.index_path.is_file() and self.path.is_file():
            try:
                idx = json.loads(self.index_path.read_text())
                if idx.get("key") == key and self.path.stat().st_size >= int(idx["end"]):
                    self.tensors = {k: (int(o), int(n)) for k, (o, n) in idx["tensors"].items()}
                    end = int(idx["end"])
            except (ValueError, KeyError, TypeError):
                self.tensors, end = {}, 0
        # Drop anything written after the last commit (a crash mid-append).
        mode = "r+b" if self.path.exists() else "w+b"
        self._f = open(self.path, mode)
        self._f.truncate(end)
        self._f.seek(end)
        self.end = end

    def add(self, arr: np.ndarray) -> tuple[int, int]:
        ptr = arr.__array_interface__["data"][0]
        memo_key = (ptr, arr.shape, arr.strides, arr.dtype.str) if ptr in self._stable else None
        if memo_key is not None and memo_key in self._memo:
            return self._memo[memo_key]
        data = np.ascontiguousarray(arr).tobytes()
        digest = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode() + data).hexdigest()
        hit = self.tensors.get(digest)
        if hit is not None:
            if memo_key is not None:
                self._memo[memo_key] = hit
            return hit
        pad = (-self.end) % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self.end += pad
        self._f.write(data)
        loc = (self.end, len(data))
        self.end += len(data)
        self.tensors[digest] = loc
        if memo_key is not None:
            self._memo[memo_key] = loc
        return loc

    def commit(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        atomic_write_json(self.index_path, {"key": self.key, "end": self.end,
                                            "tensors": {k: list(v) for k, v in self.tensors.items()}})

    def close(self) -> None:
        self._f.close()


def attach_external(model: onnx.ModelProto, weights: dict[str, np.ndarray], store: WeightStore) -> None:
    for name, arr in weights.items():
        offset, length = store.add(arr)
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape),
                        data_location=TensorProto.EXTERNAL)
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        model.graph.initializer.append(t)


# -- validation -----------------------------------------------------------------------------------
def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def check_close(name: str, got: np.ndarray, ref: np.ndarray, rtol: float, what: str) -> tuple[float, float]:
    """Max abs error and its tolerance (rtol x the reference's scale); ValidationError beyond it."""
    if got.shape != ref.shape:
        raise ValidationError(f"{what}: output {name} has shape {got.shape}, expected {ref.shape}")
    if not np.all(np.isfinite(got)):
        raise ValidationError(f"{what}: output {name} holds NaN or Inf")
    err = max_abs(got, ref)
    tol = rtol * max(1.0, float(np.max(np.abs(ref))))
    if err > tol:
        raise ValidationError(f"{what}: output {name} differs by {err:.3g} (tolerance {tol:.3g})",
                              metric="max_abs", value=err, tolerance=tol)
    return err, tol


def _ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Tier 2 checks the graph's maths, not ORT's fusions (compile validates the optimized artifact).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# -- the stage ------------------------------------------------------------------------------------
@dataclass
class ExportSettings:
    opset: int = DEFAULT_OPSET
    layernorm: str = "op"
    validate: bool = True
    seed: int = 0

    def check(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InputError(f"--opset {self.opset} is out of range", hint=f"use {MIN_OPSET}..{MAX_OPSET}")
        if self.layernorm not in LAYERNORM_MODES:
            raise InputError(f"layernorm mode {self.layernorm!r} is unknown", hint=f"use one of {LAYERNORM_MODES}")
        if self.opset < 17:
            self.layernorm = "decomposed"   # LayerNormalization exists from opset 17


@dataclass
class ExportResult:
    out_dir: Path
    summary: dict
    reused: int = 0
    exported: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)


def stitch_file_stem(stitch_id: int) -> str:
    return f"stitch_{stitch_id:03d}"


def _settings_key(loaded: LoadedSupernet, s: ExportSettings) -> str:
    blob = json.dumps({"supernet": loaded.sha256, "heads": loaded.num_heads, "opset": s.opset,
                       "layernorm": s.layernorm, "validate": s.validate, "seed": s.seed,
                       "tool": __version__, "schema": SCHEMA_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _estimate_bytes(loaded: LoadedSupernet, n_stitches: int) -> int:
    tables = sum(p.numel() for n, p in loaded.model.named_parameters() if n.endswith("stitch_bias"))
    lora = sum(p.numel() for n, p in loaded.model.named_parameters() if ".lora_" in n)
    base = sum(p.numel() for p in loaded.model.parameters()) - tables - lora
    per_stitch_bias = tables // max(1, len(loaded.model.space))
    return 4 * (base + n_stitches * per_stitch_bias) + 64 * 1024 * n_stitches


def export_supernet(loaded: LoadedSupernet, out_dir: str | os.PathLike, *, stitches: str | Iterable[int] | None = None,
                    settings: ExportSettings | None = None, fresh: bool = False,
                    on_stitch: Callable[[int, str, str], None] | None = None) -> ExportResult:
    """Export (and validate) the selected stitches of ``loaded`` into ``out_dir``."""
    t_start = time.perf_counter()
    settings = settings or ExportSettings()
    settings.check()
    model = loaded.model.eval()
    ids = parse_stitch_selection(stitches, model.space.ids) if stitches is None or isinstance(stitches, str) \
        else parse_stitch_selection(",".join(map(str, stitches)), model.space.ids)
    check_out_dir(out_dir)
    check_not_input(out_dir, {"the supernet": loaded.path}, writes=_export_writes)
    final = prepare_out_dir(out_dir)
    with output_lock(final):
        # Checked before anything changes: a refused export leaves the earlier one as it was. An
        # earlier complete export is protected by writing beside it (its weights.bin copied).
        old_weights = final / WEIGHTS_FILE
        protect = (final / "export.json").is_file() and old_weights.is_file()
        check_free_space(final, _estimate_bytes(loaded, len(ids)) + (old_weights.stat().st_size if protect else 0),
                         "this export")
        with stage_output(final, "export.json", copy=lambda rel: rel == WEIGHTS_FILE) as out:
            return _export_into(loaded, out, final, ids, settings, fresh, on_stitch, t_start)


def _export_writes(rel: str) -> bool:
    """Names the export stage writes in its folder (an input under another name is left alone)."""
    name = rel.split("/", 1)[0]
    return (name in ("export.json", WEIGHTS_FILE, INDEX_FILE) or name.startswith("stitch_")
            or name.startswith("."))


def _export_into(loaded: LoadedSupernet, out: Path, final: Path, ids: list[int], settings: ExportSettings,
                 fresh: bool, on_stitch, t_start: float) -> ExportResult:
    model = loaded.model
    key = _settings_key(loaded, settings)
    if fresh:
        _clear_export(out)
    summary_path = out / "export.json"
    if summary_path.exists():
        summary_path.unlink()       # the summary is rewritten last; without it the folder is "in progress"

    store = WeightStore(out, key, frozenset(p.data_ptr() for p in model.parameters()))
    names = loaded.spec.names
    training = loaded.spec.training or {}
    acc_table = training.get("accuracy") or {}
    imp_table = training.get("importance") or {}
    records, failed = [], []
    result = ExportResult(final, {})
    prefix_cache: dict = {}
    gen = torch.Generator().manual_seed(settings.seed)
    a0 = loaded.spec.anchors[0]
    x = torch.randn(VALIDATION_BATCH, a0.in_chans, a0.img_size, a0.img_size, generator=gen)
    try:
        for sid in ids:
            stitch = model.space.get(sid)
            route = stitch.route(names)
            stem = stitch_file_stem(sid)
            reused = _reuse(out, stem, key)
            if reused is not None:
                records.append(reused)
                result.reused += 1
                if on_stitch:
                    on_stitch(sid, route, "reused")
                continue
            try:
                rec = _export_one(model, sid, route, stem, out, store, settings, key, x, prefix_cache)
            except (ValidationError, ExportError) as err:
                failed.append({"id": sid, "route": route, "reason": str(err)})
                if on_stitch:
                    on_stitch(sid, route, "failed")
                continue
            acc = acc_table.get(str(sid))
            rec.update({"accuracy": acc, "accuracy_source": "supernet metadata" if acc is not None else None,
                        "importance": imp_table.get(str(sid))})
            atomic_write_json(out / f"{stem}.json", rec)
            records.append(rec)
            result.exported += 1
            if on_stitch:
                on_stitch(sid, route, "exported")
    finally:
        store.close()

    unique_param_bytes = _unique_param_bytes(out, store)
    summary = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tool_version": __version__,
        "settings_key": key,
        "supernet": {"path": str(loaded.path), "sha256": loaded.sha256, "space": loaded.spec.space,
                     "num_heads": loaded.num_heads, "num_heads_source": loaded.spec.num_heads_source,
                     "source_format": loaded.source_format, "num_stitches": len(model.space),
                     "training": {k: v for k, v in training.items() if k not in ("accuracy", "importance")} or None},
        "anchors": [{"name": a.name, "embed_dim": a.embed_dim, "depth": a.depth, "num_heads": a.num_heads,
                     "style": a.style} for a in loaded.spec.anchors],
        "input": _input_json(loaded),
        "output": {"name": OUTPUT_NAME, "num_classes": loaded.spec.anchors[-1].num_classes},
        "opset": settings.opset, "layernorm": settings.layernorm,
        "validation": {"batch": VALIDATION_BATCH, "seed": settings.seed, "tier1_rtol": TIER1_RTOL,
                       "tier2_rtol": TIER2_RTOL, "inputs": "seeded standard normal"},
        "weights": WEIGHTS_FILE, "weights_bytes": store.path.stat().st_size,
        "unique_param_bytes": unique_param_bytes,
        "stitches": sorted(records, key=lambda r: r["id"]),
        "failed": failed,
    }
    # Written last: its presence means the export finished.
    from .stages import write_export
    write_export(out, summary)
    result.summary = summary
    result.seconds = time.perf_counter() - t_start
    return result


def _input_json(loaded: LoadedSupernet) -> dict:
    spec = loaded.spec.input_spec
    return {"name": INPUT_NAME, "shape": ["batch", spec.in_chans, spec.image_size, spec.image_size],
            "dtype": "float32", "layout": "NCHW", "image_size": spec.image_size, "mean": list(spec.mean),
            "std": list(spec.std), "labels": None if spec.labels is None else list(spec.labels)}


def _unique_param_bytes(out: Path, store: WeightStore) -> int:
    return sum(n for _, n in store.tensors.values())


def _reuse(out: Path, stem: str, key: str) -> dict | None:
    rec_path, onnx_path = out / f"{stem}.json", out / f"{stem}.onnx"
    if not (rec_path.is_file() and onnx_path.is_file()):
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except ValueError:
        return None
    if rec.get("settings_key") != key or rec.get("onnx_sha256") != sha256_file(onnx_path):
        return None
    return rec


@torch.inference_mode()
def _export_one(model, sid: int, route: str, stem: str, out: Path, store: WeightStore,
                settings: ExportSettings, key: str, x: torch.Tensor, prefix_cache: dict) -> dict:
    stitch = model.space.get(sid)
    sliced: StitchModel = slice_stitch(model, sid)
    rec = {"id": sid, "route": route, "onnx": f"{stem}.onnx",
           "segments": [[s.anchor, s.first, s.last] for s in stitch.segments],
           "stitch_layers": [list(k) for k in stitch.layers], "final_norm": stitch.final_norm,
           "flops": stitch_flops(model.spec.anchors, stitch),
           "params": int(sum(p.numel() for p in sliced.parameters())), "settings_key": key}
    # PyTorch references on row 0 only: ONNX Runtime runs the full batch, and a graph that mixed
    # samples across the batch axis would change row 0 too.
    x0 = x[:1]
    ref_slice = sliced(x0).numpy()
    if settings.validate:
        ref_super = model.reference(x0, sid, prefix_cache).numpy()
        err1, tol1 = check_close(OUTPUT_NAME, ref_slice, ref_super, TIER1_RTOL, f"stitch {sid} slice vs supernet")
        rec.update(slice_max_abs_error=err1, slice_tolerance=tol1)
    sd = {k: v.detach().numpy() for k, v in sliced.state_dict().items()}
    try:
        graph, weights = build_stitch_graph(sliced.info.anchors, stitch.final_norm, sd, settings.opset,
                                            settings.layernorm, doc=f"esta-export stitch {sid} {route}")
    except KeyError as err:
        raise ExportError(f"stitch {sid}: the slice lacks tensor {err}") from None
    meta = {"esta_export.stitch_id": str(sid), "esta_export.route": route, "esta_export.settings_key": key}
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    attach_external(graph, weights, store)
    store.commit()       # tensors durable before any graph points into them
    onnx_path = out / f"{stem}.onnx"
    atomic_write_bytes(onnx_path, graph.SerializeToString())
    onnx.checker.check_model(str(onnx_path))
    if settings.validate:
        sess = _ort_session(onnx_path)
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape[0] != x.shape[0]:
            raise ValidationError(f"stitch {sid}: ONNX Runtime returned batch {got.shape[0]} for input batch {x.shape[0]}")
        err2, tol2 = check_close(OUTPUT_NAME, got[:1], ref_slice, TIER2_RTOL, f"stitch {sid} ONNX Runtime vs slice")
        rec.update(max_abs_error=err2, tolerance=tol2)
    rec["onnx_sha256"] = sha256_file(onnx_path)
    return rec


def _clear_export(out: Path) -> None:
    """--fresh: remove what an earlier export wrote (only our own files)."""
    for p in out.iterdir():
        if p.name in ("export.json", WEIGHTS_FILE, INDEX_FILE) or (p.name.startswith("stitch_") and p.suffix in (".onnx", ".json")):
            p.unlink()
        elif p.name.startswith(".") and ".tmp" in p.name:
            p.unlink()


def load_export(export_dir: str | os.PathLike) -> dict:
    """Read a finished export folder's export.json, checked (stages.read_export)."""
    from .stages import read_export
    return read_export(export_dir)
