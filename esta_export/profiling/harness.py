"""The timing protocol: warm up by time and count, measure in interleaved rounds, flag instability.

Why this shape (TARGETS.md section 6): a benchmark number must be one the application sees. So the
runner is called exactly as the application calls it (same process, same thread settings), each
stitch is warmed up for at least ``warmup_s`` seconds AND ``warmup_min`` calls (caches, lazy
allocations, clock ramp-up), and the stitches are timed in rounds A B C A B C ... so that machine
drift (DVFS, thermal throttling, a neighbour process) hits every candidate alike instead of
favouring whichever ran first. A stitch whose coefficient of variation stays above the threshold
after ``max_remeasure`` fresh attempts is flagged ``unstable`` and never published silently.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Hashable, Mapping, Protocol as TypingProtocol, Sequence

import numpy as np

from ..errors import ProfileError


class Runner(TypingProtocol):
    def infer(self, x: np.ndarray) -> np.ndarray: ...


CV_METRICS = ("cv", "trimmed_cv", "robust_cv")

# progress(phase, fraction in [0, 1], detail): one callback type for every long stage.
ProgressFn = Callable[[str, float, str], None]


@dataclass(frozen=True)
class TimingProtocol:
    """The measurement settings; every record carries them so numbers stay comparable."""

    warmup_s: float = 0.2
    warmup_min: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0
    cv_threshold: float = 0.05
    max_remeasure: int = 2
    # A stitch stops being timed after this many seconds even if the count is not reached, so one
    # very slow stitch on a small board cannot stall the whole run (recorded: n tells the truth).
    max_seconds: float = 60.0
    # Which dispersion decides "unstable": "cv" (std/mean over all runs, the strict default),
    # "trimmed_cv" (middle 80% of runs, as HAT trims) or "robust_cv" (1.4826 MAD / median). On a
    # shared machine, scheduler preemptions (a few ms) dominate "cv" of sub-millisecond graphs
    # while the median, which selection uses, stays put; the robust metrics say that.
    cv_metric: str = "cv"
    clock: str = "time.perf_counter_ns"
    order: str = "interleaved rounds, start rotated each round"

    @classmethod
    def from_target(cls, target: Any | None = None, **overrides: Any) -> "TimingProtocol":
        """Defaults, then the target's settings where it has them, then explicit overrides.

        Target fields are read with fallbacks because older target files may not carry them.
        """
        proto = cls()
        if target is not None:
            found: dict[str, Any] = {}
            sources = [target, getattr(target, "profile", None), getattr(target, "measure", None)]
            for name in ("warmup_s", "warmup_min", "min_runs", "min_seconds", "cv_threshold",
                         "max_remeasure", "max_seconds", "cv_metric"):
                for src in sources:
                    if src is None:
                        continue
                    value = src.get(name) if isinstance(src, Mapping) else getattr(src, name, None)
                    if value is not None:
                        found[name] = value
                        break
            proto = replace(proto, **found)
        proto = replace(proto, **{k: v for k, v in overrides.items() if v is not None})
        proto.check()
        return proto

    def check(self) -> None:
        if self.min_runs < 1 or self.warmup_min < 0:
            raise ProfileError(f"profiling needs at least 1 run per stitch (got {self.min_runs})",
                               hint="pass --runs 1 or more")
        if self.cv_metric not in CV_METRICS:
            raise ProfileError(f"unknown stability metric {self.cv_metric!r}",
                               hint=f"use one of: {', '.join(CV_METRICS)}")
        if self.min_seconds < 0 or self.warmup_s < 0 or self.cv_threshold <= 0:
            raise ProfileError("profiling times and the CV threshold must be positive",
                               hint="check --seconds and the target's profile settings")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings_hash(self, **extra: Any) -> str:
        """Hash of everything that changes what a measurement means (not how long it took)."""
        blob = json.dumps({**self.to_dict(), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class LatencyStats:
    """Latency statistics in milliseconds for one stitch."""

    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    std: float
    cv: float
    trimmed_cv: float
    robust_cv: float
    n: int
    seconds: float
    unstable: bool = False
    attempts: int = 1
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int] | np.ndarray, **kw: Any) -> "LatencyStats":
        ns = np.asarray(samples_ns, dtype=np.float64)
        if ns.size == 0:
            raise ProfileError("no timed runs were recorded", hint="raise --runs or --seconds")
        ms = ns / 1e6
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        p10, p90, p95, p99, median = (float(v) for v in np.percentile(ms, [10, 90, 95, 99, 50]))
        mid = ms[(ms >= p10) & (ms <= p90)]
        t_cv = float(mid.std(ddof=1) / mid.mean()) if mid.size > 1 and mid.mean() > 0 else 0.0
        mad = float(np.median(np.abs(ms - median)))
        return cls(min=float(ms.min()), mean=mean, median=median, p90=p90, p95=p95, p99=p99,
                   std=std, cv=std / mean if mean > 0 else 0.0, trimmed_cv=t_cv,
                   robust_cv=1.4826 * mad / median if median > 0 else 0.0, n=int(ms.size),
                   seconds=float(ns.sum() / 1e9), samples_ms=ms.tolist(), **kw)

    def to_dict(self) -> dict[str, Any]:
        """The record's ``latency_ms`` block (samples are kept out of the store: too big)."""
        return {k: getattr(self, k) for k in
                ("min", "mean", "median", "p90", "p95", "p99", "std", "cv", "trimmed_cv",
                 "robust_cv", "n", "seconds")}


def _call(runner: Runner, x: np.ndarray) -> int:
    t0 = time.perf_counter_ns()
    runner.infer(x)
    return time.perf_counter_ns() - t0


def warm_up(runner: Runner, x: np.ndarray, warmup_s: float, warmup_min: int) -> int:
    """Run until both the time and the count are reached; returns the number of calls."""
    count, spent = 0, 0
    while count < warmup_min or spent < warmup_s * 1e9:
        spent += _call(runner, x)
        count += 1
    return count


def _measure_rounds(runners: Mapping[Hashable, Runner], x: np.ndarray, proto: TimingProtocol,
                    report: Callable[[float], None]) -> dict[Hashable, list[int]]:
    """Interleaved rounds until every stitch has >= min_runs AND >= min_seconds of timed runs."""
    ids = list(runners)
    samples: dict[Hashable, list[int]] = {i: [] for i in ids}
    spent: dict[Hashable, int] = {i: 0 for i in ids}
    need_ns, cap_ns = proto.min_seconds * 1e9, proto.max_seconds * 1e9

    def done(i: Hashable) -> bool:
        enough = len(samples[i]) >= proto.min_runs and spent[i] >= need_ns
        return enough or (spent[i] >= cap_ns and len(samples[i]) >= 1)

    active = [i for i in ids if not done(i)]
    rnd = 0
    while active:
        # Rotate the start so no stitch always runs right after the same neighbour.
        k = rnd % len(active)
        for i in active[k:] + active[:k]:
            dt = _call(runners[i], x)
            samples[i].append(dt)
            spent[i] += dt
        rnd += 1
        active = [i for i in active if not done(i)]
        if rnd % 16 == 0 or not active:
            frac = sum(min(1.0, min(len(samples[i]) / proto.min_runs,
                                    spent[i] / need_ns if need_ns else 1.0)) for i in ids)
            report(frac / len(ids))
    return samples


def profile_runners(runners: Mapping[Hashable, Runner], input_shape: Sequence[int] | None = None,
                    *, inputs: np.ndarray | None = None, protocol: TimingProtocol | None = None,
                    warmup_s: float | None = None, warmup_min: int | None = None,
                    min_runs: int | None = None, min_seconds: float | None = None,
                    cv_threshold: float | None = None, max_remeasure: int | None = None,
                    cv_metric: str | None = None, progress: ProgressFn | None = None, seed: int = 0) -> dict[Hashable, LatencyStats]:
    """Time every runner with the protocol; returns latency statistics per id.

    ``inputs`` (or a seeded random tensor of ``input_shape``) is created once and reused: the
    input is already in host memory, as in an application that preprocesses ahead of inference.
    """
    if not runners:
        return {}
    proto = protocol or TimingProtocol()
    proto = replace(proto, **{k: v for k, v in dict(
        warmup_s=warmup_s, warmup_min=warmup_min, min_runs=min_runs, min_seconds=min_seconds,
        cv_threshold=cv_threshold, max_remeasure=max_remeasure, cv_metric=cv_metric).items()
        if v is not None})
    proto.check()
    if inputs is None:
        if input_shape is None:
            raise ProfileError("profiling needs an input shape or an input tensor",
                               hint="pass input_shape=(batch, 3, H, W)")
        inputs = np.random.default_rng(seed).standard_normal(tuple(input_shape)).astype(np.float32)
    x = np.ascontiguousarray(inputs)
    say = progress or (lambda phase, frac, detail: None)

    for n, (i, r) in enumerate(runners.items()):
        say("warm-up", n / len(runners), str(i))
        warm_up(r, x, proto.warmup_s, proto.warmup_min)

    samples = _measure_rounds(runners, x, proto, lambda f: say("measure", f, ""))
    stats = {i: LatencyStats.from_ns(s) for i, s in samples.items()}

    for attempt in range(2, proto.max_remeasure + 2):
        shaky = {i: runners[i] for i, s in stats.items()
                 if getattr(s, proto.cv_metric) > proto.cv_threshold}
        if not shaky:
            break
        say("re-measure", 0.0, f"{len(shaky)} unstable (attempt {attempt})")
        for r in shaky.values():  # the machine may have been disturbed: warm up again
            warm_up(r, x, proto.warmup_s, proto.warmup_min)
        again = _measure_rounds(shaky, x, proto, lambda f: say("re-measure", f, ""))
        for i, s in again.items():
            # A fresh attempt replaces the old one (no cherry-picking the best of several).
            stats[i] = LatencyStats.from_ns(s, attempts=attempt)
    for s in stats.values():
        s.unstable = getattr(s, proto.cv_metric) > proto.cv_threshold
    say("done", 1.0, "")
    return stats
