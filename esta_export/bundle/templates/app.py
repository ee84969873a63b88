#!/usr/bin/env python3
"""Example application: load this bundle, pick a stitch by latency budget, classify an image.

Needs only numpy and the bundle's runtime: onnxruntime, or openvino for an OpenVINO bundle (Pillow
to read PNG/JPEG); a TensorRT bundle runs its engines once build_engines.py has built and
validated them (TensorRT + cuda-python). Run from anywhere:

    python3 app.py [IMAGE.npy|IMAGE.png] [--budget-ms 5] [--min-accuracy 0.7] [--runs 20]
    python3 app.py --deadline-ms 5 [--runs 1000]   # a stream under a deadline, switching stitches
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bundled runtime: esta_runtime/

import numpy as np  # noqa: E402

from esta_runtime import Bundle, BundleError, NoStitchFitsError  # noqa: E402


def load_image(path: Path) -> np.ndarray:
    """An HxWxC image from a .npy or an image file; anything unusable is one BundleError line."""
    hint = "give an RGB image: a PNG/JPEG file, or an HxWx3 uint8 .npy"
    if not path.exists():
        raise BundleError(f"image {path} not found", hint=hint)
    if path.is_dir():
        raise BundleError(f"image {path} is a folder, not a file", hint=hint)
    if not path.is_file():
        raise BundleError(f"image {path} is not a regular file (a FIFO or device?)", hint=hint)
    if path.stat().st_size == 0:
        raise BundleError(f"image {path} is empty (0 bytes)", hint=hint)
    if path.suffix.lower() == ".npy":
        try:
            img = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            why = "it holds Python objects, which are refused" if "pickle" in str(err) else "not a readable .npy"
            raise BundleError(f"image {path}: {why}", hint=hint) from None
        if not isinstance(img, np.ndarray) or img.dtype.kind not in "biuf":
            raise BundleError(f"image {path} holds {getattr(img, 'dtype', type(img))} values, not pixels", hint=hint)
        if img.size == 0:
            raise BundleError(f"image {path} has no pixels (shape {list(img.shape)})", hint=hint)
        return img
    try:
        from PIL import Image
    except ImportError:
        raise BundleError(f"reading {path.suffix} images needs Pillow",
                          hint="pip install pillow, or pass the image as an HxWx3 uint8 .npy") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BundleError(f"image {path} is not a readable image ({' '.join(str(err).split())[:100]})",
                          hint=hint) from None


def run_governed(bundle, args) -> int:
    """A stream of inputs (the image, else random pixels) under the deadline governor."""
    from esta_runtime.governor import Governor, summary_lines

    size = bundle.input_spec["image_size"]
    rng = np.random.default_rng(0)
    fixed = None if args.image is None else bundle.preprocess(load_image(args.image))
    with Governor(bundle, deadline_ms=args.deadline_ms) as gov:
        print(f"governor: front {gov.front} (fastest first), starting at stitch {gov.active}")
        for _ in range(max(1, 1000 if args.runs is None else args.runs)):
            gov.run(fixed if fixed is not None else
                    bundle.preprocess(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        print("\n".join(summary_lines(gov.stats())))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", nargs="?", type=Path, help=".npy (HxWx3) or PNG/JPEG (with Pillow)")
    p.add_argument("--budget-ms", type=float, default=None, help="latency budget per image")
    p.add_argument("--min-accuracy", type=float, default=None)
    p.add_argument("--stitch", type=int, default=None, help="use this stitch id instead of selecting")
    p.add_argument("--runs", type=int, default=None, help="timed runs after a 0.2 s warm-up (default 20; "
                   "with --deadline-ms, inputs in the stream: default 1000)")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="run a stream of inputs under this deadline, switching stitches as the load changes")
    p.add_argument("--no-verify", action="store_true", help="skip hashing every file at open")
    args = p.parse_args(argv)
    try:
        t0 = time.perf_counter()
        bundle = Bundle.open(HERE, verify=not args.no_verify)
        print(f"opened bundle ({len(bundle.stitches())} stitches, target "
              f"{bundle.manifest['target']['name']}, running on {bundle.engine}) in "
              f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
        if bundle.engine_note:  # a TensorRT bundle whose engines are not (yet) usable here
            print(f"note: {bundle.engine_note}")
        if args.deadline_ms is not None:
            return run_governed(bundle, args)
        stitch = (bundle.stitch(args.stitch) if args.stitch is not None
                  else bundle.select(latency_budget_ms=args.budget_ms, min_accuracy=args.min_accuracy))
        t0 = time.perf_counter()
        bundle.activate(stitch.id)
        if stitch.id in bundle.int8_checks:  # int8 stitch on a CPU lacking what it was validated on
            print(f"note: {bundle.int8_checks[stitch.id]['note']}")
        expected = "-" if stitch.latency_ms is None else f"{stitch.latency_ms:.3g}"
        print(f"stitch {stitch.id} {stitch.route}: expected {expected} ms "
              f"({stitch.latency_source or 'no latency recorded'}), accuracy {stitch.accuracy} "
              f"({stitch.accuracy_source or 'unknown'}); loaded in {(time.perf_counter() - t0) * 1e3:.1f} ms")
        if args.image is not None:
            image = load_image(args.image)
        else:
            size = bundle.input_spec["image_size"]
            image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
            print("note: no image given, classifying random pixels (the labels mean nothing)")
        x = bundle.preprocess(image)
        # Warm up as the profiler did (0.2 s and 10 calls, runtime/timing.py's defaults), so the
        # median below is the steady state the manifest's latency describes.
        t_warm, n_warm = time.perf_counter() + 0.2, 0
        while n_warm < 10 or time.perf_counter() < t_warm:
            bundle.run(x)
            n_warm += 1
        times = []
        for _ in range(max(1, args.runs or 20)):
            t = time.perf_counter()
            logits = bundle.run(x)
            times.append((time.perf_counter() - t) * 1e3)
        top = np.argsort(-logits[0])[:5]
        labels = bundle.labels or [str(i) for i in range(logits.shape[1])]
        exp = np.exp(logits[0] - logits[0].max())
        probs = exp / exp.sum()
        print("top-5: " + ", ".join(f"{labels[i]} {probs[i]:.3f}" for i in top))
        print(f"latency over {len(times)} runs: median {np.median(times):.3f} ms, "
              f"min {np.min(times):.3f} ms (measured here)")
        fastest = min(bundle.stitches(), key=lambda s: s.latency_ms if s.latency_ms is not None else 1e30)
        bundle.load(fastest.id)
        t = time.perf_counter()
        bundle.activate(fastest.id)
        print(f"switched to stitch {fastest.id} in {(time.perf_counter() - t) * 1e6:.1f} us (already loaded)")
    except (BundleError, NoStitchFitsError) as err:
        print(f"app: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
