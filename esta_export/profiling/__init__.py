"""On-device profiling: timing harness, environment fingerprint, profile store, peak memory.

Import the submodules you need (``esta_export.profiling.harness`` ...): this package import stays
light so command modules can reference it without pulling numpy-heavy code at CLI start-up.
"""

from __future__ import annotations

__all__ = ["harness", "environment", "store", "memory", "record", "compiled"]
