#!/usr/bin/env python3
"""Build this kit's TensorRT engines on this device and validate them against the fp32 reference.

A launcher: the code is ``esta_runtime/tensorrt/`` next to this file (needs TensorRT's Python
bindings, cuda-python and numpy; no esta-export). Run from anywhere:

    python3 build_engines.py kit.json [--check] [--fresh]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esta_runtime.tensorrt.kit import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
