"""Copy this runtime package where it ships (a bundle, a TensorRT build kit) as it is."""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def copy_runtime(dst: Path) -> None:
    """``dst`` becomes a copy of the runtime's sources (subpackages included, no caches)."""
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
