"""The one reader for the ``.npz`` data users hand us (calibration and validation data).

``x``: preprocessed float inputs (N, C, H, W); ``y``: optional integer labels (N). Checked before
use: a regular file (a FIFO would block), a real zip archive (``np.load`` would take anything else
for a pickle), no object arrays, finite floating-point inputs (NaN inputs would give every stitch
the same chance accuracy, or calibrate int8 on garbage), integer labels, one label per input.
Label ranges are checked by the caller that knows the number of classes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .fsutil import check_input_file

HINT = "save it with numpy.savez(path, x=float32 N,C,H,W inputs, y=int labels)"


def load_npz(path: str | Path, what: str, *, need_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    path = check_input_file(path, what, hint=HINT)
    if not zipfile.is_zipfile(path):
        raise InputError(f"{what} {path} is not a readable .npz archive", hint=HINT)
    try:
        with np.load(path, allow_pickle=False) as data:
            want = ("x", "y") if need_labels else ("x",)
            if any(k not in data.files for k in want):
                raise InputError(f"{what} {path} has arrays {sorted(data.files)[:6]}, not "
                                 f"{' and '.join(repr(k) for k in want)}", hint=HINT)
            x = np.asarray(data["x"])
            y = np.asarray(data["y"]) if "y" in data.files else None
    except InputError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as err:
        reason = "object arrays need pickle, which is refused" if "allow_pickle" in str(err) else \
            " ".join(str(err).split())[:120] or type(err).__name__
        raise InputError(f"cannot read {what} {path} ({reason})", hint=HINT) from None
    if x.dtype == object or not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what} {path}: inputs 'x' are {x.dtype}, not floating point", hint=HINT)
    if x.ndim != 4:
        raise InputError(f"{what} {path}: inputs 'x' have shape {list(x.shape)}, not (N, C, H, W)", hint=HINT)
    if len(x) == 0:
        raise InputError(f"{what} {path} holds no samples (x has length 0)", hint="save at least one input in 'x'")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise InputError(f"{what} {path}: inputs 'x' hold {bad} NaN or infinite values",
                         hint="fix the preprocessing; every input must be a finite number")
    if y is not None:
        if y.dtype == object or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"{what} {path}: labels 'y' must be integers, got {y.dtype}",
                             hint="store class indices (0-based ints), not one-hot vectors or strings")
        if y.ndim != 1 or len(y) != len(x):
            raise InputError(f"{what} {path}: labels 'y' have shape {list(y.shape)}, need one per input ({len(x)})",
                             hint=HINT)
    return x, y


def check_labels(y: np.ndarray, num_classes: int | None, what: str) -> None:
    if num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{what}: labels 'y' hold {int(y.min())}..{int(y.max())}, outside the model's "
                         f"{num_classes} classes (0..{num_classes - 1})",
                         hint="save the 0-based class index of each input as y")
