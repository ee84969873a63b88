#!/usr/bin/env python3
"""Time every stitch of this bundle on this device; prints one JSON record per line.

Needs only numpy and onnxruntime; a TensorRT bundle is timed on its engines instead (TensorRT's
Python bindings + cuda-python; build and validate them first with `python3 build_engines.py
kit.json`, else it refuses). `esta-export profile --remote` runs it over SSH; run it by hand with:
python3 profile_device.py [--runs 50] [--seconds 2] [--threads N]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from esta_runtime.profiler import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--bundle", str(HERE), *sys.argv[1:]]))
