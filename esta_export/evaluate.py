"""Task accuracy of the compiled artifacts on the user's validation data.

The number that matters is the top-1 of what ships (the fp16/int8 artifact on its runtime), not
of the PyTorch model; ``--val-data DATA.npz`` holds ``x`` (float32 N,3,H,W, already normalised
as the export's input spec says) and ``y`` (integer labels, N).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import stages
from .errors import InputError


def load_val_data(path: str | Path, input_shape: Sequence[Any] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` from an .npz, checked against the export's input shape when given."""
    from .data import load_npz

    path = Path(path)
    x, y = load_npz(path, "validation data", need_labels=True)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise InputError(f"{path}: need x of shape (N,3,H,W) and y of shape (N), got "
                         f"{x.shape} and {y.shape}", hint="fix the arrays in the .npz")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: labels 'y' must be integers, got {y.dtype}",
                         hint="store class indices, not one-hot vectors or strings")
    if input_shape is not None:
        want = [d for d in input_shape[1:]]
        if all(isinstance(d, int) for d in want) and list(x.shape[1:]) != want:
            raise InputError(f"{path}: images are {list(x.shape[1:])} but the stitches take "
                             f"{want}", hint="resize and normalise the images as the export says")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def evaluate_runner(runner: Any, x: np.ndarray, y: np.ndarray, batch: int = 32,
                    static_batch: bool = False) -> float:
    """Top-1 accuracy; with a static batch the last batch is padded and the padding ignored."""
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if static_batch and n < batch:
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch - n, axis=0)])
        logits = np.asarray(runner.infer(xb))[:n]
        correct += int((logits.argmax(axis=1) == y[i:i + n]).sum())
    return correct / len(x)


def evaluate_compiled(compiled_dir: str | Path, target: Any, val_data: str | Path,
                      stitch_ids: Sequence[int] | None = None
                      ) -> dict[int, dict[str, Any]]:
    """Top-1 of every compiled artifact: {id: {"accuracy", "n", "source"}} (runs them all)."""
    from .targets import load_target

    target = load_target(target) if isinstance(target, (str, Path)) else target
    compiled_dir = Path(compiled_dir)
    comp, export, _ = stages.read_compiled(compiled_dir)
    x, y = _checked_data(val_data, export)
    rows = stages.stitch_table(comp, export)
    if stitch_ids is not None:
        wanted = {int(s) for s in stitch_ids}
        rows = [r for r in rows if r["id"] in wanted]
    return {r["id"]: _evaluate_row(compiled_dir, comp, target, r, x, y) for r in rows}


def recorded_accuracy(compiled_dir: str | Path, target: Any, val_data: str | Path,
                      store_path: str | Path | None = None) -> dict[int, dict[str, Any]]:
    """Top-1 of every compiled artifact on ``val_data``, evaluated once: results are recorded
    in the accuracy store (stages.AccuracyStore) keyed by the artifact's sha256 and the data
    file's sha256, and read back on the next run instead of running the artifact again."""
    from .fsutil import sha256_file
    from .targets import load_target

    target = load_target(target) if isinstance(target, (str, Path)) else target
    compiled_dir = Path(compiled_dir)
    comp, export, _ = stages.read_compiled(compiled_dir)
    x, y = _checked_data(val_data, export)
    data_sha = sha256_file(val_data)
    store = stages.AccuracyStore(store_path or stages.default_accuracy_path(compiled_dir,
                                                                            target.name))
    known = store.lookup(data_sha)
    out, new = {}, []
    for row in stages.stitch_table(comp, export):
        rec = known.get(row["sha256"]) if row.get("sha256") else None
        if rec is None:
            rec = {**_evaluate_row(compiled_dir, comp, target, row, x, y),
                   "artifact_sha256": row["sha256"], "data_sha256": data_sha,
                   "stitch_id": row["id"], "target": target.name}
            new.append(rec)
        out[row["id"]] = {"accuracy": rec["accuracy"], "n": rec["n"], "source": rec["source"]}
    store.append(new)
    return out


def _checked_data(val_data: str | Path, export: dict[str, Any] | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_val_data(val_data, ((export or {}).get("input") or {}).get("shape"))
    num_classes = ((export or {}).get("output") or {}).get("num_classes")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{val_data}: labels range {y.min()}..{y.max()} but the model has "
                         f"{num_classes} classes", hint="use labels in 0..num_classes-1")
    if not np.isfinite(x).all():
        raise InputError(f"{val_data}: images 'x' hold NaN or infinite values",
                         hint="store finite, normalised float32 images")
    return x, y


def _evaluate_row(compiled_dir: Path, comp: dict[str, Any], target: Any, row: dict[str, Any],
                  x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from .backends import get_backend

    shapes = getattr(target, "shapes", None)
    static = bool(getattr(shapes, "static", False))
    batch = (getattr(shapes, "batch_sizes", (1,)) or (1,))[0] if static else 32
    runner = get_backend(comp.get("backend") or target.backend).load(compiled_dir / row["path"],
                                                                     target)
    try:
        acc = evaluate_runner(runner, x, y, batch=batch, static_batch=static)
    finally:
        close = getattr(runner, "close", None)
        if close:
            close()
    return {"accuracy": acc, "n": int(len(x)),
            "source": f"val-data top-1 of the compiled {comp.get('precision', '')} "
                      f"artifact on {target.name} ({len(x)} samples)"}
