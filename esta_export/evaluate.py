"""Task accuracy of the compiled artifacts on the user's validation data.

The number that matters is the top-1 of what ships (the fp16/int8 artifact on its runtime), not
of the PyTorch model; ``--val-data DATA.npz`` holds ``x`` (float32 N,3,H,W, already normalised
as the export's input spec says) and ``y`` (integer labels, N).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

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
                      stitch_ids: Sequence[Hashable] | None = None
                      ) -> dict[Hashable, dict[str, Any]]:
    """Top-1 of every compiled artifact: {id: {"accuracy", "n", "source"}}."""
    from .backends import get_backend
    from .profiling.compiled import read_compiled, stitch_table
    from .targets import load_target

    target = load_target(target) if isinstance(target, (str, Path)) else target
    compiled_dir = Path(compiled_dir)
    comp, export, _ = read_compiled(compiled_dir)
    x, y = load_val_data(val_data, ((export or {}).get("input") or {}).get("shape"))
    num_classes = ((export or {}).get("output") or {}).get("num_classes")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{val_data}: labels range {y.min()}..{y.max()} but the model has "
                         f"{num_classes} classes", hint="use labels in 0..num_classes-1")
    shapes = getattr(target, "shapes", None)
    static = bool(getattr(shapes, "static", False))
    batch = (getattr(shapes, "batch_sizes", (1,)) or (1,))[0] if static else 32
    backend = get_backend(comp.get("backend") or target.backend)
    out = {}
    wanted = None if stitch_ids is None else {str(s) for s in stitch_ids}
    for row in stitch_table(comp, export):
        if wanted is not None and str(row["id"]) not in wanted:
            continue
        runner = backend.load(compiled_dir / row["path"], target)
        try:
            acc = evaluate_runner(runner, x, y, batch=batch, static_batch=static)
        finally:
            close = getattr(runner, "close", None)
            if close:
                close()
        out[row["id"]] = {"accuracy": acc, "n": int(len(x)),
                          "source": f"val-data top-1 of the compiled {comp.get('precision', '')} "
                                    f"artifact on {target.name} ({len(x)} samples)"}
    return out
