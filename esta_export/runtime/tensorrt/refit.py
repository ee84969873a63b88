"""Refit a weight-stripped engine from the bundle's one copy of the family's weights.

A stripped plan (built with STRIP_PLAN + REFIT_IDENTICAL) holds kernels and metadata but not the
weights; before its first inference they are put back from the stitch's ONNX graph, whose
initializers point into the bundle's shared ``models/weights.bin`` (ONNX external data). So a
bundle of K stitches stores the family's unique weights once, plus K small plans.

Two ways, tried in this order:

1. ``OnnxParserRefitter.refit_from_file(graph)`` (TensorRT 10): the parser maps the graph's
   initializers onto the engine's weights exactly as it did at build time;
2. named weights: the engine's refittable weight names (``Refitter.get_all_weights``; the ONNX
   parser names them after the graph's initializers) looked up in the bundle's weights index
   (``models/weights.json``: stitch -> initializer name -> unique tensor in ``weights.bin``),
   read with numpy and set with ``set_named_weights``. :func:`named_weight_plan` is that mapping,
   testable without TensorRT.

Either way the refitter must report no missing weights, and the caller re-validates the refitted
engine against the fp32 reference before it is used. Written against TensorRT 10's documented
API; NOT verified on hardware.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class RefitError(RuntimeError):
    """A stripped engine could not get its weights back."""


def named_weight_plan(engine_names, index: dict, stitch_id) -> tuple[dict[str, int], list[str]]:
    """Map each engine weight name to a unique tensor of the shared weights file.

    ``index`` is the bundle's ``weights.json``; returns ``({engine name: tensor index}, [names
    the index does not hold])``. Small initializers the bundle writer keeps inside the graph are
    not in the index: they come back as missing, and the named path cannot refit that engine.
    """
    names = (index.get("stitches") or {}).get(str(stitch_id))
    if names is None:
        raise RefitError(f"stitch {stitch_id} has no entry in the weights index")
    mapping, missing = {}, []
    for name in engine_names:
        if name in names:
            mapping[name] = int(names[name])
        else:
            missing.append(name)
    return mapping, missing


def read_tensor(index: dict, data_path: Path, i: int) -> np.ndarray:
    """Unique tensor ``i`` of the shared weights file, as the index describes it."""
    t = index["tensors"][i]
    dtype = np.dtype(t["dtype"])
    count = int(t["length"]) // dtype.itemsize
    arr = np.fromfile(data_path, dtype=dtype, count=count, offset=int(t["offset"]))
    if arr.size != count:
        raise RefitError(f"{Path(data_path).name} is shorter than the weights index says")
    return arr.reshape(t["shape"])


def _refit_from_graph(refitter: "trt.Refitter", logger: "trt.ILogger", onnx_path: Path,  # noqa: F821
                      caps: dict) -> None:
    import tensorrt as trt

    if not caps["onnx_parser_refitter"]:
        raise RefitError("this TensorRT has no OnnxParserRefitter (onnx_parser_refitter: 10.0+)")
    parser_refitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser_refitter.refit_from_file(str(onnx_path)):
        errors = [parser_refitter.get_error(i).desc() for i in range(parser_refitter.num_errors)]
        raise RefitError(f"refit from {Path(onnx_path).name} failed: " + (" | ".join(errors) or "no detail"))


def _refit_by_name(refitter: "trt.Refitter", index: dict, data_path: Path, stitch_id) -> list:  # noqa: F821
    import tensorrt as trt

    mapping, missing = named_weight_plan(refitter.get_all_weights(), index, stitch_id)
    if missing:
        raise RefitError(f"{len(missing)} engine weights are not in the shared weights index "
                         f"(first: {missing[0]})")
    keep = []  # TensorRT reads the arrays during refit_cuda_engine: keep them alive until then
    for name, i in mapping.items():
        arr = np.ascontiguousarray(read_tensor(index, data_path, i))
        keep.append(arr)
        if not refitter.set_named_weights(name, trt.Weights(arr)):
            raise RefitError(f"TensorRT refused the weights named {name}")
    return keep


def refit(held, onnx_path: Path, *, index: dict | None = None, data_path: Path | None = None,
          stitch_id=None) -> str:
    """Refit ``held`` (a deserialized engine, see :func:`.runner.deserialize`) in place; return
    how ("onnx-parser" or "named-weights"). Raises :class:`RefitError` when neither works."""
    import tensorrt as trt

    from .capabilities import capabilities

    caps = capabilities(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    problems, how = [], None
    for way in ("onnx-parser", "named-weights"):
        refitter = trt.Refitter(held.engine, logger)
        try:
            if way == "onnx-parser":
                _refit_from_graph(refitter, logger, onnx_path, caps)
                keep = None
            else:
                if index is None or data_path is None:
                    raise RefitError("no shared weights index to refit by name")
                keep = _refit_by_name(refitter, index, data_path, stitch_id)
            missing = refitter.get_missing_weights()
            if missing:
                raise RefitError(f"{len(missing)} weights still missing after refit (first: {missing[0]})")
            if not refitter.refit_cuda_engine():
                raise RefitError("refit_cuda_engine failed")
            del keep
            how = way
            break
        except RefitError as err:
            problems.append(f"{way}: {err}")
    if how is None:
        raise RefitError("cannot refit the weight-stripped engine (" + "; ".join(problems) + ")")
    return how
