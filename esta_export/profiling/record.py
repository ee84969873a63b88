"""One profile record from one measurement: what every record of a profiling pass shares
(:class:`MeasureContext`, built once per pass) and the record itself (:func:`build_record`).

``profile`` (profiling/compiled.py) and the fleet's boards (profiling/fleet.py) both build their
records here, so the two write the same schema (stages.check_profile_record reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..runtime.session import SessionSettings
from .harness import LatencyStats, TimingProtocol, stats_record
from .store import now_iso


def transfers_for(target: Any) -> str:
    """What a timing includes besides compute (part of the settings hash: a record timed with
    host<->device copies is not comparable with one timed without)."""
    if getattr(target, "transfers_included", False):
        return "included (host->device->host per call)"
    if getattr(getattr(target, "device", None), "kind", "cpu") != "cpu":
        return "not included"
    return "none (host memory, CPU execution)"


@dataclass(frozen=True)
class MeasureContext:
    """Where, with what and how one profiling pass (one target, one batch size) measures.

    ``settings`` is the settings hash, the profile cache's key besides the artifact and the
    environment; :meth:`for_pass` derives it from the other fields."""

    target: Any
    backend: str
    precision: str | None
    batch: int
    shape: list[int]
    threads: Any
    env: dict[str, Any]
    env_hash: str
    protocol: TimingProtocol
    session: SessionSettings
    transfers: str
    settings: str

    @classmethod
    def for_pass(cls, target: Any, *, backend: str, precision: str | None, batch: int,
                 shape: Sequence[int], protocol: TimingProtocol, session: SessionSettings,
                 env: dict[str, Any], env_hash: str) -> "MeasureContext":
        transfers = transfers_for(target)
        extra: dict[str, Any] = {}
        if backend != "onnxruntime":
            # What else changes the measurement there: the [execution] settings the backend
            # compiles with (OpenVINO's hint and pinning).
            ex = getattr(target, "execution", None)
            extra["execution"] = {"performance_hint": getattr(ex, "performance_hint", None),
                                  "cpu_pinning": getattr(ex, "cpu_pinning", None)}
        settings = protocol.settings_hash(batch=batch, shape=list(shape), precision=precision,
                                          threads=session.threads, backend=backend,
                                          transfers=transfers, session=session.key(), **extra)
        return cls(target, backend, precision, batch, list(shape), session.threads, env, env_hash,
                   protocol, session, transfers, settings)

    def session_record(self) -> dict[str, Any]:
        """The session configuration a record carries: ONNX Runtime's full settings (the bundle
        runtime applies them), else the target's [execution] as the backend read it."""
        if self.backend == "onnxruntime":
            return self.session.to_dict()
        execution = getattr(self.target, "execution", None)
        rec = {"threads": getattr(execution, "threads", 0) or None,
               "performance_hint": getattr(execution, "performance_hint", None),
               "source": self.session.source}
        if getattr(execution, "cpu_pinning", None) is not None:
            rec["cpu_pinning"] = bool(execution.cpu_pinning)
        return rec


def build_record(ctx: MeasureContext, row: dict[str, Any], stats: LatencyStats, *,
                 threads: Any = None, mem: dict[str, Any] | None = None,
                 energy: dict[str, Any] | None = None, tegra: dict[str, Any] | None = None,
                 predicted_ms: float | None = None) -> dict[str, Any]:
    """The profile record of stitch ``row`` timed as ``stats`` (``threads``: what the runner
    reported using, when it says; else the pass's)."""
    from .environment import hardware_match

    mem = mem or {}
    hw = hardware_match(ctx.target.device, ctx.env)
    rec = {
        "stitch_id": row["id"], "route": row.get("route"), "artifact_sha256": row.get("sha256"),
        "target": ctx.target.name, "backend": ctx.backend, "precision": ctx.precision,
        "batch": ctx.batch, "input_shape": ctx.shape, "threads": threads or ctx.threads,
        **stats_record(stats, ctx.protocol),
        "peak_rss_mb": mem.get("peak_rss_mb"), "memory_method": mem.get("method"),
        "memory_error": mem.get("error"),
        "env": ctx.env, "env_hash": ctx.env_hash, "settings_hash": ctx.settings,
        "transfers": ctx.transfers, "measured": True, "time": now_iso(),
        "session": ctx.session_record(),
        # Where it really ran, from the fingerprint (not the target file's claim).
        "hardware": hw, "verified_on_hardware": hw["matches"],
    }
    if energy is not None:
        rec["energy"] = energy
    if tegra:
        rec["tegrastats"] = tegra
    if predicted_ms is not None:
        rec["predicted_before_ms"] = predicted_ms
    return rec
