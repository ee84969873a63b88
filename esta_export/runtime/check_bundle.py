"""The device loop's validation step: every stitch of a bundle, on this device, through the gates.

``python3 -m esta_runtime.check_bundle --bundle . --reference reference.npz --gates gates.json``
runs every stitch of the bundle on this device with the runtime the app uses, on the compile
stage's reference inputs, gates it against the fp32 logits, and prints one JSON object
``{"stitches": {id: verdict}, "env": {...}}``. The arithmetic is :mod:`.gates` (the one gate the
host's compile stage applies too). Imports numpy only (the runtime when it runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .gates import compare_logits, gate


def validate_bundle(bundle_dir: str | Path, reference: Mapping[str, np.ndarray], precision: str,
                    thresholds: Mapping[str, float] | None = None, stitch_ids=None,
                    engine: str = "auto") -> dict[int, dict[str, Any]]:
    """Run every stitch of the bundle on ``reference["x"]`` and gate it against ``ref_<id>``.

    ``engine`` as :meth:`Bundle.open` takes it ("tensorrt" for a TensorRT bundle: its engines or
    nothing). A stitch that fails to run gets ``{"passed": False, "reason": "..."}``.
    """
    from .bundle import Bundle

    x = np.ascontiguousarray(reference["x"], dtype=np.float32)
    labels = reference.get("y")
    out: dict[int, dict[str, Any]] = {}
    with Bundle.open(bundle_dir, engine=engine) as bundle:
        ids = [s.id for s in bundle.stitches()] if stitch_ids is None else [int(i) for i in stitch_ids]
        for sid in ids:
            ref = reference.get(f"ref_{sid}")
            if ref is None:
                out[sid] = {"passed": False, "precision": precision,
                            "reason": f"reference.npz holds no fp32 logits ref_{sid}"}
                continue
            try:
                logits = np.concatenate([bundle.run(x[i:i + 1], stitch_id=sid) for i in range(len(x))])
                verdict = gate(precision, compare_logits(logits, ref, labels), thresholds)
            except Exception as err:  # noqa: BLE001 - one stitch failing must not hide the others
                first = str(err).splitlines()[0] if str(err) else ""
                verdict = {"passed": False, "precision": precision, "reason": f"{type(err).__name__}: {first}"}
            verdict["engine"] = bundle.engine
            out[sid] = verdict
            bundle.unload(sid)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Validate every stitch of a bundle on this device.")
    p.add_argument("--bundle", default=".")
    p.add_argument("--reference", required=True, help="reference.npz: x, optional y, ref_<id>")
    p.add_argument("--gates", required=True, help="JSON: {precision, thresholds, engine}")
    p.add_argument("--stitches", default=None, help="comma-separated ids (default: all)")
    args = p.parse_args(argv)
    from .errors import BundleError

    try:
        spec = json.loads(Path(args.gates).read_text())
        with np.load(args.reference, allow_pickle=False) as z:
            reference = {k: z[k] for k in z.files}
        ids = None if not args.stitches else [int(i) for i in args.stitches.split(",")]
        results = validate_bundle(args.bundle, reference, spec["precision"], spec.get("thresholds"),
                                  ids, engine=spec.get("engine", "auto"))
    except (BundleError, OSError, ValueError, KeyError) as err:
        print(f"validation: error: {err}", file=sys.stderr)
        return 2
    import platform

    print(json.dumps({"stitches": {str(k): v for k, v in results.items()},
                      "env": {"hostname": platform.node(), "machine": platform.machine(),
                              "python": platform.python_version(), "numpy": np.__version__}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
