"""An int8 stitch on a CPU that lacks what it was validated with: re-validate it or refuse it.

Compilation records on every int8 artifact which instruction sets it was validated on and what a
CPU needs for that validation to hold (``int8_isa``, see :mod:`.cpu`). When this CPU lacks it, the
bundle runtime runs the stitch on the bundle's ``reference.npz`` (the compile stage's inputs and
fp32 logits) with the target's int8 gates; a stitch that fails, or that cannot be re-validated
because the bundle ships no reference, is refused with one line. numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cpu import int8_problem
from .errors import BundleError, IntegrityError
from .gates import compare_logits, gate
from .integrity import resolve_inside, sha256_file

DEFAULT_MIN_TOP1 = 0.90
DEFAULT_MAX_DROP = 0.01
HINT = ("compile int8 on a CPU like this one or for a target that does not declare int8 dot products "
        "in [device] cpu_flags (7-bit weights, exact on any CPU), or bundle a fp32 target")


def needs_check(manifest: dict, entry: dict, engine: str) -> bool:
    """int8 stitches run by a CPU engine (a TensorRT engine runs on the GPU)."""
    precision = entry.get("precision") or (manifest.get("target") or {}).get("precision")
    return precision == "int8" and engine != "tensorrt"


def _reference(root: Path, manifest: dict, files: dict[str, str]) -> dict | None:
    ref = manifest.get("reference")
    if not isinstance(ref, dict) or not isinstance(ref.get("path"), str) or not ref["path"]:
        return None
    path = resolve_inside(root, ref["path"])
    expected = files.get(ref["path"])
    if not path.is_file() or expected is None or sha256_file(path) != expected:
        raise IntegrityError(f"bundle file {ref['path']} does not match the manifest's sha256",
                             hint="re-copy the bundle")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise BundleError(f"bundle file {ref['path']} is not a readable .npz ({err})",
                          hint="re-copy the bundle") from None


def _gates(manifest: dict, where) -> dict:
    """The target's int8 gates from the manifest, checked: numbers in range, else one line."""
    given = (manifest.get("reference") or {}).get("thresholds") or {}
    th = {"int8_min_top1_agreement": DEFAULT_MIN_TOP1, "max_accuracy_drop": DEFAULT_MAX_DROP}
    try:
        for k in th:
            if isinstance(given, dict) and given.get(k) is not None:
                if isinstance(given[k], bool):
                    raise TypeError(k)
                th[k] = float(given[k])
    except (TypeError, ValueError):
        raise BundleError(f"manifest.json: the int8 gates for {where} are not numbers",
                          hint="re-create the bundle with esta-export bundle") from None
    if not (0.0 <= th["int8_min_top1_agreement"] <= 1.01 and -1.0 <= th["max_accuracy_drop"] <= 1.0):
        raise BundleError(f"manifest.json: the int8 gates for {where} are out of range",  # NaN too
                          hint="re-create the bundle with esta-export bundle")
    return th


def check_int8(root: Path, manifest: dict, entry: dict, run, features: dict, *,
               batch: int = 8) -> dict | None:
    """None when the stitch's validation holds on this CPU; else the re-validation's verdict
    (a dict with ``note``), or :class:`BundleError` when it fails or cannot be done.

    ``run(x)`` returns the stitch's logits for an NCHW float32 batch.
    """
    sid = entry.get("id")
    problem = int8_problem(entry.get("int8_isa"), features)
    if problem is None:
        return None
    files = {f.get("path"): f.get("sha256") for f in manifest.get("files", []) if isinstance(f, dict)}
    ref = _reference(root, manifest, files)
    key = f"ref_{sid}"
    if ref is None or "x" not in ref or key not in ref:
        raise BundleError(f"int8 stitch {sid} refused: {problem}, and the bundle has no reference "
                          "outputs to re-validate it on this CPU", hint=HINT)
    where = (manifest.get("reference") or {}).get("path")
    th = _gates(manifest, where)
    try:
        x = np.asarray(ref["x"], dtype=np.float32)
        expected = np.asarray(ref[key], dtype=np.float32)
        labels = ref.get("y")
        if x.ndim != 4 or not len(x) or expected.ndim != 2 or len(expected) != len(x) or (
                labels is not None and np.asarray(labels).reshape(-1).shape != (len(x),)):
            raise ValueError("it needs inputs [N, C, H, W], outputs [N, classes] and N labels")
        out = np.concatenate([np.asarray(run(x[i:i + batch]), dtype=np.float32)
                              for i in range(0, len(x), batch)])
        if out.shape != expected.shape:
            raise ValueError(f"the stitch outputs {list(out.shape)}, the reference {list(expected.shape)}")
    except BundleError:
        raise
    except Exception as err:  # numpy or the runtime, on malformed reference arrays
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise BundleError(f"cannot re-validate int8 stitch {sid} with {where}: {text}",
                          hint="re-copy the bundle or re-create it with esta-export bundle") from None
    v = gate("int8", compare_logits(out, expected, labels), th)  # the one tier-3 gate
    top1, min_top1 = v["top1_agreement"], float(th["int8_min_top1_agreement"])
    verdict = {"samples": int(len(x)), "top1_agreement": top1, "min_top1_agreement": min_top1,
               "problem": problem}
    if "accuracy_drop" in v:
        verdict.update(accuracy_drop=v["accuracy_drop"], max_accuracy_drop=float(th["max_accuracy_drop"]))
    failed = None
    if not v["passed"]:
        failed = ("outputs contain NaN or Inf" if v["metric"] == "finite" else
                  f"top-1 agreement {top1:.3g} < {min_top1:.3g}" if v["metric"] == "top1_agreement"
                  else f"accuracy drop {v['value']:.3g} > {v['threshold']:.3g}")
    if failed:
        raise BundleError(f"int8 stitch {sid} refused: {problem}; re-validated on this CPU against "
                          f"{(manifest.get('reference') or {}).get('path')} ({len(x)} samples): {failed}",
                          hint=HINT)
    verdict["note"] = (f"int8 stitch {sid} re-validated on this CPU, which lacks the int8 dot products it "
                       f"was validated with: top-1 agreement {top1:.3g} >= {min_top1:.3g} on {len(x)} "
                       "reference samples")
    return verdict
