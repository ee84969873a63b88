"""A tiny stitched family on disk, in the documented stage formats, for tests and benchmarks.

The bundle stage reads the export, compile and select stages' files. This module writes a small
but real family in those formats without torch: two ViT-like anchors (patch embedding, pre-norm
MLP blocks, mean pooling, linear head) built with ``onnx.helper``, and stitches that run the first
blocks of the narrow anchor, a stitching layer, and the remaining blocks of the wide one. Every
stitch graph points into one shared ``weights.bin`` (ONNX external data), as ``esta-export
export`` writes it, so the bundle's dedupe and the runtime's shared initializers see what a real
family looks like: most tensors shared by several stitches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS = "weights.bin"


@dataclass(frozen=True)
class FamilySpec:
    widths: tuple[int, int] = (32, 64)
    depth: int = 3
    image_size: int = 32
    patch: int = 8
    num_classes: int = 10
    mlp_ratio: int = 4
    seed: int = 0


def _tensor_store(spec: FamilySpec) -> dict[str, np.ndarray]:
    """Every weight of the family, once, under the name the graphs use."""
    rng = np.random.default_rng(spec.seed)
    w: dict[str, np.ndarray] = {}

    def lin(name: str, fan_in: int, fan_out: int) -> None:
        w[f"{name}.weight"] = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        w[f"{name}.bias"] = (0.02 * rng.standard_normal(fan_out)).astype(np.float32)

    for a, width in enumerate(spec.widths):
        p = f"anchor{a}"
        w[f"{p}.patch.weight"] = (rng.standard_normal((width, 3, spec.patch, spec.patch))
                                  / np.sqrt(3 * spec.patch ** 2)).astype(np.float32)
        w[f"{p}.patch.bias"] = np.zeros(width, np.float32)
        for b in range(spec.depth):
            w[f"{p}.blocks.{b}.norm.weight"] = np.ones(width, np.float32)
            w[f"{p}.blocks.{b}.norm.bias"] = np.zeros(width, np.float32)
            lin(f"{p}.blocks.{b}.fc1", width, width * spec.mlp_ratio)
            lin(f"{p}.blocks.{b}.fc2", width * spec.mlp_ratio, width)
        lin(f"{p}.head", width, spec.num_classes)
    for k in range(1, spec.depth):
        lin(f"stitch_layers.{k}", spec.widths[0], spec.widths[1])
    return w


def routes(spec: FamilySpec) -> list[tuple[int, str, list[list[int]]]]:
    """(id, route, segments): the two anchors, then narrow[0..k-1] > wide[k..] for each k."""
    d = spec.depth
    out = [(0, f"A0[0-{d - 1}]", [[0, 0, d - 1]]), (1, f"A1[0-{d - 1}]", [[1, 0, d - 1]])]
    for k in range(1, d):
        out.append((1 + k, f"A0[0-{k - 1}]>A1[{k}-{d - 1}]", [[0, 0, k - 1], [1, k, d - 1]]))
    return out


def _stitch_graph(spec: FamilySpec, sid: int, route: str, segments, store: dict[str, np.ndarray]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, used = [], []
    counter = iter(range(10_000))

    def t(prefix: str) -> str:
        return f"{prefix}_{next(counter)}"

    def use(name: str) -> str:
        if name not in used:
            used.append(name)
        return name

    first = f"anchor{segments[0][0]}"
    x = t("patches")
    nodes.append(helper.make_node("Conv", ["pixels", use(f"{first}.patch.weight"), use(f"{first}.patch.bias")],
                                  [x], strides=[spec.patch, spec.patch], kernel_shape=[spec.patch, spec.patch]))
    flat = t("flat")
    nodes.append(helper.make_node("Reshape", [x, use("shape_nct")], [flat]))
    tokens = t("tokens")
    nodes.append(helper.make_node("Transpose", [flat], [tokens], perm=[0, 2, 1]))
    x = tokens
    for i, (anchor, lo, hi) in enumerate(segments):
        p = f"anchor{anchor}"
        if i > 0:
            k = lo
            y = t("stitched")
            nodes.append(helper.make_node("MatMul", [x, use(f"stitch_layers.{k}.weight")], [y]))
            z = t("stitched_b")
            nodes.append(helper.make_node("Add", [y, use(f"stitch_layers.{k}.bias")], [z]))
            x = z
        for b in range(lo, hi + 1):
            q = f"{p}.blocks.{b}"
            n = t("ln")
            nodes.append(helper.make_node("LayerNormalization", [x, use(f"{q}.norm.weight"),
                                                                 use(f"{q}.norm.bias")], [n], axis=-1))
            h1, h1b, g, h2, h2b, r = (t(s) for s in ("fc1", "fc1b", "gelu", "fc2", "fc2b", "res"))
            nodes += [
                helper.make_node("MatMul", [n, use(f"{q}.fc1.weight")], [h1]),
                helper.make_node("Add", [h1, use(f"{q}.fc1.bias")], [h1b]),
                helper.make_node("Relu", [h1b], [g]),
                helper.make_node("MatMul", [g, use(f"{q}.fc2.weight")], [h2]),
                helper.make_node("Add", [h2, use(f"{q}.fc2.bias")], [h2b]),
                helper.make_node("Add", [x, h2b], [r]),
            ]
            x = r
    last = f"anchor{segments[-1][0]}"
    pooled = t("pooled")
    nodes.append(helper.make_node("ReduceMean", [x], [pooled], axes=[1], keepdims=0))
    nodes.append(helper.make_node("Gemm", [pooled, use(f"{last}.head.weight"), use(f"{last}.head.bias")],
                                  ["logits"]))
    width0 = spec.widths[segments[0][0]]
    inits = []
    for name in used:
        if name == "shape_nct":
            inits.append(numpy_helper.from_array(np.array([0, width0, -1], np.int64), name))
        else:
            inits.append(numpy_helper.from_array(store[name], name))
    size = spec.image_size
    graph = helper.make_graph(
        nodes, f"stitch_{sid}",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", spec.num_classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="esta-export-testing")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _externalize(models: dict[int, "object"], folder: Path, shared: bool) -> None:
    """Point every initializer above 64 bytes into external data: one shared file or one per graph."""
    from onnx import numpy_helper

    shared_offsets: dict[str, tuple[int, int]] = {}
    shared_file = open(folder / WEIGHTS, "wb") if shared else None
    try:
        for sid, model in models.items():
            data_name = WEIGHTS if shared else f"stitch_{sid:03d}.onnx.data"
            own = None if shared else open(folder / data_name, "wb")
            f = shared_file if shared else own
            for tensor in model.graph.initializer:
                arr = numpy_helper.to_array(tensor)
                if arr.nbytes <= 64:
                    continue
                raw = arr.tobytes()
                if shared and tensor.name in shared_offsets:
                    off, length = shared_offsets[tensor.name]
                else:
                    f.seek(0, 2)
                    pad = (-f.tell()) % 64
                    f.write(b"\0" * pad)
                    off, length = f.tell(), len(raw)
                    f.write(raw)
                    if shared:
                        shared_offsets[tensor.name] = (off, length)
                tensor.ClearField("raw_data")
                tensor.ClearField("float_data")
                tensor.data_location = 1  # TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key, value in (("location", data_name), ("offset", str(off)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            if own is not None:
                own.close()
    finally:
        if shared_file is not None:
            shared_file.close()


def make_family(job_dir: str | Path, spec: FamilySpec | None = None, *, target: str = "cpu",
                compiled_separate_weights: bool = False, with_selection: bool = True,
                fail_ids: tuple[int, ...] = ()) -> Path:
    """Write ``export/``, ``compiled/<target>/`` and ``select/<target>.json`` under ``job_dir``.

    ``compiled_separate_weights`` gives every compiled artifact its own data file (duplicated
    tensors), as an optimizing backend may write them; ``fail_ids`` marks stitches whose
    validation failed in compile.json.
    """
    import hashlib

    import onnx

    spec = spec or FamilySpec()
    job = Path(job_dir)
    export = job / "export"
    (export / "stitches").mkdir(parents=True, exist_ok=True)
    store = _tensor_store(spec)
    store["shape_nct"] = np.zeros(3, np.int64)  # placeholder; graphs build their own
    all_routes = routes(spec)
    models = {sid: _stitch_graph(spec, sid, route, seg, store) for sid, route, seg in all_routes}
    # ONNX refuses external-data locations with "..", so the shared file sits next to the graphs.
    pristine = {sid: _copy(m) for sid, m in models.items()}
    _externalize(models, export / "stitches", shared=True)
    for sid, model in models.items():
        onnx.save_model(model, str(export / "stitches" / f"stitch_{sid:03d}.onnx"))
    weights_bytes = (export / "stitches" / WEIGHTS).stat().st_size
    unique = sum(a.nbytes for k, a in store.items() if k != "shape_nct")

    def params(seg) -> int:
        names = set()
        for m in [models[s] for s, _, sg in all_routes if sg == seg]:
            names |= {i.name for i in m.graph.initializer}
        return int(sum(store[n].size for n in names if n in store and n != "shape_nct"))

    stitches = []
    for sid, route, seg in all_routes:
        widths = [spec.widths[a] for a, _, _ in seg]
        acc = round(0.5 + 0.1 * sid / len(all_routes) + 0.05 * (widths[-1] == spec.widths[1]), 4)
        stitches.append({"id": sid, "route": route, "onnx": f"stitches/stitch_{sid:03d}.onnx",
                         "segments": seg, "flops": int(params(seg) * 2 * (spec.image_size // spec.patch) ** 2),
                         "params": params(seg), "slice_max_abs_error": 0.0, "max_abs_error": 0.0,
                         "accuracy": acc, "accuracy_source": "testing fixture (not measured)",
                         "importance": None})
    export_json = {
        "schema": "esta-export/export", "schema_version": "1.0", "tool_version": "0.1.0",
        "supernet": {"path": "fixture.safetensors", "sha256": hashlib.sha256(b"fixture%d" % spec.seed).hexdigest(),
                     "space": "testing", "num_heads": [1, 1], "source_format": "native"},
        "input": {"name": "pixels", "shape": ["batch", 3, spec.image_size, spec.image_size],
                  "dtype": "float32", "layout": "NCHW", "image_size": spec.image_size,
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                  "labels": [f"class_{i}" for i in range(spec.num_classes)]},
        "output": {"name": "logits", "num_classes": spec.num_classes},
        "opset": 17, "layernorm": "op", "weights": f"stitches/{WEIGHTS}",
        "weights_bytes": weights_bytes, "unique_param_bytes": unique,
        "stitches": stitches, "failed": [],
        "anchors": [{"name": f"A{a}", "embed_dim": w, "depth": spec.depth, "num_heads": 1}
                    for a, w in enumerate(spec.widths)],
    }
    (export / "export.json").write_text(json.dumps(export_json, indent=2))

    compiled = job / "compiled" / target
    compiled.mkdir(parents=True, exist_ok=True)
    models = pristine
    _externalize(models, compiled, shared=not compiled_separate_weights)
    artifacts, failed = [], []
    for sid, route, _ in all_routes:
        name = f"stitch_{sid:03d}.onnx"
        onnx.save_model(models[sid], str(compiled / name))
        data = WEIGHTS if not compiled_separate_weights else f"{name}.data"
        files = {rel: _sha(compiled / rel) for rel in (name, data)}
        passed = sid not in fail_ids
        art = {"id": sid, "route": route, "path": name, "sha256": files[name], "files": files,
               "validation": {"metric": "max_abs_error", "value": 0.0 if passed else 0.5,
                              "tolerance": 1e-4, "passed": passed}}
        artifacts.append(art)
        if not passed:
            failed.append({"id": sid, "reason": "max_abs_error 0.5 > tolerance 1e-4"})
    import onnxruntime

    (compiled / "compile.json").write_text(json.dumps({
        "target": target, "backend": "onnxruntime", "precision": "fp32",
        "runtime": {"onnxruntime": onnxruntime.__version__}, "verified_on_hardware": True,
        "engines_built": True, "device_build_required": False,
        "artifacts": artifacts, "failed": failed}, indent=2))

    if with_selection:
        sel_dir = job / "select"
        sel_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for s in stitches:
            lat = 0.1 + s["flops"] / 1e8  # predicted from FLOPs: clearly labelled as predicted
            entries.append({"id": s["id"], "route": s["route"], "flops": s["flops"], "params": s["params"],
                            "latency": {"median": lat, "p90": lat * 1.1, "p99": lat * 1.3,
                                        "source": "predicted"},
                            "unstable": False, "peak_rss_mb": None, "accuracy": s["accuracy"],
                            "accuracy_source": s["accuracy_source"]})
        (sel_dir / f"{target}.json").write_text(json.dumps({
            "target": target, "accuracy_source": "testing fixture (not measured)",
            "selected": [s["id"] for s in stitches], "stitches": entries}, indent=2))
    return job


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
