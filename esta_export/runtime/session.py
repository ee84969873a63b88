"""The ONE ONNX Runtime session configuration: the bundle runtime and esta-export's profiler both
build their sessions here, so a profiled latency is the latency the app sees.

What is configured and why:
- ``intra_op_spinning`` (default off): with several stitches loaded, idle worker pools spinning
  after each run steal the CPU from the running session (measured: 3x slower, robust CV 25-29%
  -> 3-8% without). ``esta-export profile --tune`` measures both and may turn it on.
- ``threads``: intra-op threads (None/0 = ONNX Runtime's default, the physical cores).
- ``share_weights``: one copy of each weight for every loaded stitch; needs weight prepacking
  off (Python has no shared prepacked-weights container) and the CPU memory arena off (each
  session's arena would keep its peak activations reserved).
Every record and the bundle manifest carry :meth:`SessionSettings.to_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class SessionSettings:
    threads: int | None = None
    intra_op_spinning: bool = False
    share_weights: bool = True
    memory_arena: bool | None = None  # None: off when sharing weights, on otherwise
    source: str = "default"           # "default" | "target" | "tuned" | "manifest" | "caller"

    @property
    def arena(self) -> bool:
        return (not self.share_weights) if self.memory_arena is None else bool(self.memory_arena)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(memory_arena=self.arena, prepacking=not self.share_weights,
                 threads=int(self.threads) if self.threads else None)
        return d

    def key(self) -> dict[str, Any]:
        """What changes a measurement (for cache keys): everything but where it came from."""
        d = self.to_dict()
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, **over: Any) -> "SessionSettings":
        d = dict(d or {})
        s = cls(threads=int(d["threads"]) if d.get("threads") else None,
                intra_op_spinning=bool(d.get("intra_op_spinning", False)),
                share_weights=bool(d.get("share_weights", True)),
                memory_arena=d.get("memory_arena") if d.get("memory_arena") is not None else None,
                source=str(d.get("source") or "manifest"))
        return replace(s, **{k: v for k, v in over.items() if v is not None})

    @classmethod
    def from_target(cls, target: Any, tuned: Mapping[str, Any] | None = None) -> "SessionSettings":
        """The target's ``[execution]`` settings, replaced by a ``--tune`` choice when given."""
        ex = getattr(target, "execution", None)
        s = cls(threads=int(getattr(ex, "threads", 0) or 0) or None,
                intra_op_spinning=bool(getattr(ex, "intra_op_spinning", False)),
                share_weights=bool(getattr(ex, "share_weights", True)), source="target")
        if tuned:
            s = replace(cls.from_dict(tuned), source="tuned")
        return s


def ort_session_options(ort: Any, settings: SessionSettings):
    """An ``onnxruntime.SessionOptions`` for ``settings`` (the caller adds shared initializers)."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "1" if settings.intra_op_spinning else "0")
    so.enable_cpu_mem_arena = settings.arena
    if settings.threads:
        so.intra_op_num_threads = int(settings.threads)
    if settings.share_weights:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.log_severity_level = 3
    return so
