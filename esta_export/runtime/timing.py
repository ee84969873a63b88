"""The one timing protocol and its statistics, for the host profiler and the on-device profiler.

What it measures is what an application sees: an application runs one active stitch call after
call, so each *visit* to a stitch is a block of consecutive calls (at least ``block_calls`` calls
AND ``block_ms`` milliseconds). Timing stitches call by call (A B C A B C ...) would time every
call right after another model, with that model's weights in the caches: measured 1.2-3.4x slower
than a plain loop over one session. Drift (DVFS, thermal throttling, a neighbour process) must
still hit every candidate alike, so visits rotate across rounds, in a different order each round.

The first ``switch_calls`` call(s) of a visit that follows another stitch are what a runtime pays
right after a switch (cold caches, lazily touched weights): they are kept apart as the stitch's
``switch_in`` latency and never mixed into the steady-state statistics.

Each stitch is warmed up (at least ``warmup_s`` seconds AND ``warmup_min`` calls) and then timed
until it has ``min_runs`` steady-state calls AND ``min_seconds`` of them, or earlier, from
``early_stop_s`` seconds on, once its samples already meet the stability goal and its median is
known to within ``ci_goal`` (relative half-width of the interval): timing a stitch that is
already pinned down only costs time. Its median carries a
confidence interval: a block bootstrap (visits resampled with replacement, since calls within a
visit are correlated), percentile method, at ``ci_level``. A stitch whose dispersion stays above
``cv_threshold`` is re-measured, but only while another attempt lowers the dispersion (by at least
``remeasure_min_gain``: the machine was disturbed and calmed down); when an attempt does not,
measuring again would only cost time, and the stitch is flagged ``unstable``.

Where the runtime measures each call itself (OpenVINO's ``InferRequest.latency``, what
``benchmark_app`` reports), that time is kept too, as ``compute_ms`` beside the wall time: the
wall time is what the application sees, the runtime's own time is what its benchmark tool
compares with, and their difference is the per-call cost of calling it from Python.

Torch-free and free of esta-export imports beyond this package: the bundle ships it as
``esta_runtime.timing``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Hashable, Mapping, Protocol as TypingProtocol, Sequence

import numpy as np

from .errors import TimingError


class Runner(TypingProtocol):
    """What the protocol times. A runner may also have ``compute_ns() -> int | None`` (the
    runtime's own time for the last call, e.g. OpenVINO's ``InferRequest.latency``) and
    ``compute_source`` (what that is): records then carry ``compute_ms`` next to the wall time."""

    def infer(self, x: np.ndarray) -> Any: ...


CV_METRICS = ("cv", "trimmed_cv", "robust_cv")
# Re-measuring continues group by group while at least this share of the re-timed stitches
# reached the stability goal (see TimingProtocol.remeasure_probe).
REMEASURE_MIN_SUCCESS = 0.5
# The early stop judges a stitch only once it has this many visits (a bootstrap over fewer
# blocks says little), with this many resamples (the published interval uses ci_resamples).
EARLY_STOP_BLOCKS = 4
EARLY_STOP_RESAMPLES = 200
# progress(phase, fraction in [0, 1], detail): one callback type for every long stage.
ProgressFn = Callable[[str, float, str], None]
CI_METHOD = "block bootstrap of the median (visits resampled with replacement), percentile"

_PROTOCOL_KEYS = ("warmup_s", "warmup_min", "min_runs", "min_seconds", "block_calls", "block_ms",
                  "switch_calls", "cv_threshold", "max_remeasure", "remeasure_min_gain",
                  "remeasure_probe", "early_stop_s", "ci_goal",
                  "max_seconds", "cv_metric",
                  "ci_level", "ci_resamples")


@dataclass(frozen=True)
class TimingProtocol:
    """The measurement settings; every record carries them so numbers stay comparable."""

    warmup_s: float = 0.2
    warmup_min: int = 10
    min_runs: int = 50          # steady-state calls per stitch, at least
    min_seconds: float = 1.0    # steady-state seconds per stitch, at least ...
    # ... unless, from this many seconds on (and min_runs calls, EARLY_STOP_BLOCKS visits), the
    # stitch already meets cv_threshold and its median's interval half-width is <= ci_goal of the
    # median (checked between rounds, outside the timed calls). 0 turns the early stop off.
    early_stop_s: float = 0.4
    ci_goal: float = 0.02
    block_calls: int = 5        # each visit: at least this many consecutive calls ...
    block_ms: float = 50.0      # ... and at least this long
    switch_calls: int = 1       # first calls of a visit after another stitch: switch-in
    cv_threshold: float = 0.05
    # Re-measures allowed at most; each one only while the previous lowered the dispersion by at
    # least ``remeasure_min_gain`` (relative): a noise-level dip is no reason to pay again.
    max_remeasure: int = 2
    remeasure_min_gain: float = 0.2
    # Re-measures go in groups of this many unstable stitches; the next group is re-timed only
    # while at least half of those re-timed so far reached the goal. Otherwise the machine is the
    # limit, not the moment (measured on a drifting VM: 0 of 35 re-measures reached the goal and
    # they cost as much as the first pass), and no later attempt re-times a stitch that was not
    # re-timed yet (only those whose own re-measure lowered their dispersion go on). 0: every
    # unstable stitch is re-timed.
    remeasure_probe: int = 3
    # A stitch stops being timed after this many seconds even if the count is not reached, so one
    # very slow stitch on a small board cannot stall the whole run (recorded: n tells the truth).
    max_seconds: float = 60.0
    # Which dispersion decides "unstable": "robust_cv" (1.4826 MAD / median: the median is what
    # selection uses, and scheduler preemptions of a few ms on a shared machine leave it alone),
    # "trimmed_cv" (middle 80% of runs, as HAT trims) or "cv" (std/mean over all runs, strict).
    cv_metric: str = "robust_cv"
    ci_level: float = 0.95
    ci_resamples: int = 1000
    clock: str = "time.perf_counter_ns"
    order: str = "blocks of consecutive calls per visit, visits rotated in a new order each round"

    @classmethod
    def with_overrides(cls, base: "TimingProtocol | None" = None, /,
                       **overrides: Any) -> "TimingProtocol":
        """``base`` (else the defaults) with the overrides that are not None, checked.

        The one place optional protocol arguments resolve (command-line flags default to None)."""
        proto = replace(base or cls(), **{k: v for k, v in overrides.items() if v is not None})
        proto.check()
        return proto

    def check(self) -> None:
        if self.min_runs < 1 or self.warmup_min < 0 or self.block_calls < 1 or self.switch_calls < 0:
            raise TimingError(f"profiling needs at least 1 run per stitch and per visit (got "
                              f"min_runs {self.min_runs}, block_calls {self.block_calls})",
                              hint="pass --runs 1 or more")
        if self.cv_metric not in CV_METRICS:
            raise TimingError(f"unknown stability metric {self.cv_metric!r}",
                              hint=f"use one of: {', '.join(CV_METRICS)}")
        if (self.min_seconds < 0 or self.warmup_s < 0 or self.block_ms < 0 or self.cv_threshold <= 0
                or self.max_seconds <= 0):
            raise TimingError("profiling times and the CV threshold must be positive",
                              hint="check --seconds and the target's profile settings")
        if self.remeasure_probe < 0 or self.max_remeasure < 0:
            raise TimingError(f"remeasure_probe {self.remeasure_probe} / max_remeasure "
                              f"{self.max_remeasure} cannot be negative",
                              hint="use 0 or more (remeasure_probe 0: re-time every unstable stitch)")
        if self.early_stop_s < 0 or not 0 < self.ci_goal < 1:
            raise TimingError(f"early_stop_s {self.early_stop_s} / ci_goal {self.ci_goal} are not "
                              "usable", hint="use early_stop_s >= 0 (0: off) and ci_goal in (0, 1), "
                                             "e.g. 0.02")
        if not 0 <= self.remeasure_min_gain < 1:
            raise TimingError(f"remeasure_min_gain {self.remeasure_min_gain} is not in [0, 1)",
                              hint="use e.g. 0.2 (another attempt must cut the dispersion by 20%)")
        if not 0.5 <= self.ci_level < 1 or self.ci_resamples < 10:
            raise TimingError(f"confidence level {self.ci_level} / {self.ci_resamples} resamples "
                              "are not usable", hint="use a level in [0.5, 1) and >= 10 resamples")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings_hash(self, **extra: Any) -> str:
        """Hash of everything that changes what a measurement means (not how long it took)."""
        blob = json.dumps({**self.to_dict(), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- statistics


def median_ci(blocks_ms: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 1000,
              seed: int = 0) -> tuple[float, float]:
    """Block-bootstrap percentile interval of the median of the pooled samples.

    Visits are resampled with replacement (calls inside a visit share its machine state, so they
    are not independent); with a single visit the calls themselves are resampled.
    """
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks_ms if len(b)]
    if not blocks:
        raise TimingError("no timed runs were recorded", hint="raise --runs or --seconds")
    rng = np.random.default_rng(seed)
    if len(blocks) == 1:
        a = blocks[0]
        if a.size == 1:
            return float(a[0]), float(a[0])
        idx = rng.integers(0, a.size, size=(resamples, a.size))
        meds = np.median(a[idx], axis=1)
    else:
        k = len(blocks)
        picks = rng.integers(0, k, size=(resamples, k))
        meds = np.empty(resamples)
        for r in range(resamples):
            meds[r] = np.median(np.concatenate([blocks[j] for j in picks[r]]))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(meds, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class LatencyStats:
    """Steady-state latency statistics in milliseconds for one stitch."""

    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv: float
    trimmed_cv: float
    robust_cv: float
    n: int
    seconds: float
    median_ci: tuple[float, float] | None = None
    ci_level: float | None = None
    blocks: int = 1
    unstable: bool = False
    attempts: int = 1
    dispersion_history: list[float] = field(default_factory=list)
    switch_in: dict[str, Any] | None = None
    # The runtime's own time per steady-state call, where it reports one (compute_stats).
    compute: dict[str, Any] | None = None
    # Share of the CPU time during the measurement that the hypervisor gave to someone else
    # (/proc/stat steal; None where the kernel does not say), for the attempt that stands.
    cpu_steal: float | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int] | np.ndarray, **kw: Any) -> "LatencyStats":
        """Statistics of one block of samples (no interval unless one is given)."""
        ns = np.asarray(samples_ns, dtype=np.float64)
        if ns.size == 0:
            raise TimingError("no timed runs were recorded", hint="raise --runs or --seconds")
        ms = ns / 1e6
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        p10, p90, p95, p99, median = (float(v) for v in np.percentile(ms, [10, 90, 95, 99, 50]))
        mid = ms[(ms >= p10) & (ms <= p90)]
        t_cv = float(mid.std(ddof=1) / mid.mean()) if mid.size > 1 and mid.mean() > 0 else 0.0
        mad = float(np.median(np.abs(ms - median)))
        return cls(min=float(ms.min()), mean=mean, median=median, p90=p90, p95=p95, p99=p99,
                   max=float(ms.max()), std=std, cv=std / mean if mean > 0 else 0.0,
                   trimmed_cv=t_cv, robust_cv=1.4826 * mad / median if median > 0 else 0.0,
                   n=int(ms.size), seconds=float(ns.sum() / 1e9), samples_ms=ms.tolist(), **kw)

    @classmethod
    def from_blocks(cls, blocks_ns: Sequence[Sequence[int]], proto: TimingProtocol,
                    seed: int = 0, **kw: Any) -> "LatencyStats":
        """Pooled statistics of the visits, with the block-bootstrap interval of the median."""
        blocks = [list(b) for b in blocks_ns if len(b)]
        flat = [v for b in blocks for v in b]
        ci = median_ci([np.asarray(b, np.float64) / 1e6 for b in blocks], proto.ci_level,
                       proto.ci_resamples, seed) if flat else None
        return cls.from_ns(flat, median_ci=ci, ci_level=proto.ci_level, blocks=len(blocks), **kw)

    def dispersion(self, metric: str) -> float:
        return float(getattr(self, metric))

    def to_dict(self) -> dict[str, Any]:
        """The record's ``latency_ms`` block (samples are kept out of the store: too big)."""
        out = {k: getattr(self, k) for k in
               ("min", "mean", "median", "p90", "p95", "p99", "max", "std", "cv", "trimmed_cv",
                "robust_cv", "n", "seconds", "blocks", "cpu_steal")}
        if self.median_ci is not None:
            out["median_ci"] = [float(self.median_ci[0]), float(self.median_ci[1])]
            out["ci_level"] = self.ci_level
            out["ci_method"] = CI_METHOD
        return out


def compute_stats(samples_ns: Sequence[int], wall_median_ms: float | None,
                  source: str | None) -> dict[str, Any] | None:
    """``{"median", "p90", "n", "source", "overhead_ms"}`` in ms of the runtime's own per-call
    times (None without any); ``overhead_ms`` is the wall median minus this median: what the
    caller pays around the runtime's own measurement."""
    if not samples_ns:
        return None
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    med = float(np.median(ms))
    return {"median": med, "p90": float(np.percentile(ms, 90)), "n": int(ms.size),
            "source": source,
            "overhead_ms": None if wall_median_ms is None else float(wall_median_ms - med)}


def switch_in_stats(samples_ns: Sequence[int], calls: int) -> dict[str, Any] | None:
    """``{"median", "max", "n", "calls"}`` in ms over the switches seen (None without any)."""
    if not samples_ns or calls < 1:
        return None
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"median": float(np.median(ms)), "max": float(ms.max()), "n": int(ms.size // calls),
            "calls": int(calls)}


# ---------------------------------------------------------------- the protocol


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


def visit_order(ids: Sequence[Hashable], rnd: int, last: Hashable | None, seed: int = 0) -> list:
    """The order of one round: a fresh permutation per round, never starting with the stitch the
    previous round ended on (every visit is then a real switch)."""
    ids = list(ids)
    if len(ids) < 2:
        return ids
    perm = np.random.default_rng([seed, rnd]).permutation(len(ids))
    order = [ids[i] for i in perm]
    if order[0] == last:
        order[0], order[1] = order[1], order[0]
    return order


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, None where there is none (not Linux).

    Steal is time the hypervisor gave this VM's vCPUs to someone else: on a shared VM it is what
    moves a latency by tens of percent from one second to the next, and nothing inside the VM
    can stop it. Read around every visit (outside the timed calls) so each record says how much
    of its measurement the machine lost that way."""
    try:
        with open("/proc/stat", "rb") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if len(parts) < 9 or parts[0] != b"cpu":
        return None
    vals = [int(v) for v in parts[1:9]]   # user nice system idle iowait irq softirq steal
    return vals[7], sum(vals)


@dataclass
class _Samples:
    blocks: list[list[int]] = field(default_factory=list)
    switch_in: list[int] = field(default_factory=list)
    compute: list[int] = field(default_factory=list)   # the runtime's own time per steady call
    spent: int = 0
    steal: int = 0           # jiffies stolen during this stitch's visits
    ticks: int = 0           # all jiffies during them

    @property
    def n(self) -> int:
        return sum(len(b) for b in self.blocks)


def pinned_down(blocks_ns: Sequence[Sequence[int]], proto: TimingProtocol, seed: int = 0) -> bool:
    """The early stop's test: enough visits, dispersion within the goal, and the median's
    block-bootstrap interval no wider than +-ci_goal of the median."""
    if len(blocks_ns) < EARLY_STOP_BLOCKS:
        return False
    st = LatencyStats.from_ns(np.concatenate([np.asarray(b, dtype=np.float64) for b in blocks_ns]))
    if st.median <= 0 or st.dispersion(proto.cv_metric) > proto.cv_threshold:
        return False
    lo, hi = median_ci([np.asarray(b, dtype=np.float64) / 1e6 for b in blocks_ns], proto.ci_level,
                       EARLY_STOP_RESAMPLES, seed)
    return (hi - lo) / 2.0 <= proto.ci_goal * st.median


def measure_blocks(runners: Mapping[Hashable, Runner], x: np.ndarray, proto: TimingProtocol,
                   report: Callable[[float], None] | None = None, seed: int = 0,
                   last: list | None = None) -> dict[Hashable, _Samples]:
    """Rounds of visits until every stitch has >= min_runs AND >= min_seconds steady-state (or
    is pinned down from early_stop_s on, or has used max_seconds)."""
    ids = list(runners)
    got = {i: _Samples() for i in ids}
    need_ns, cap_ns, block_ns = proto.min_seconds * 1e9, proto.max_seconds * 1e9, proto.block_ms * 1e6
    early_ns = proto.early_stop_s * 1e9
    last = last if last is not None else [None]

    def done(i: Hashable) -> bool:
        s = got[i]
        if s.spent >= cap_ns and s.n >= 1:
            return True
        if s.n < proto.min_runs:
            return False
        if s.spent >= need_ns:
            return True
        return bool(early_ns) and s.spent >= early_ns and pinned_down(s.blocks, proto, seed)

    active = [i for i in ids if not done(i)]
    rnd = 0
    while active:
        for i in visit_order(active, rnd, last[0], seed):
            r, s = runners[i], got[i]
            compute = getattr(r, "compute_ns", None)
            t_before = cpu_ticks()
            switched = last[0] is not None and last[0] != i
            if switched and proto.switch_calls:
                for _ in range(proto.switch_calls):
                    s.switch_in.append(_call(r, x))
            block: list[int] = []
            spent = 0
            while len(block) < proto.block_calls or spent < block_ns:
                dt = _call(r, x)
                block.append(dt)
                spent += dt
                if compute is not None:   # read after the timed call, outside it
                    c = compute()
                    if c:
                        s.compute.append(int(c))
                if s.spent + spent >= cap_ns:
                    break
            s.blocks.append(block)
            s.spent += spent
            t_after = cpu_ticks()
            if t_before is not None and t_after is not None:
                s.steal += t_after[0] - t_before[0]
                s.ticks += t_after[1] - t_before[1]
            last[0] = i
        rnd += 1
        active = [i for i in active if not done(i)]
        if report is not None:
            frac = sum(min(1.0, got[i].n / proto.min_runs,
                           got[i].spent / need_ns if need_ns else 1.0) for i in ids)
            report(frac / len(ids))
    return got


def _steal(s: _Samples) -> float | None:
    return s.steal / s.ticks if s.ticks > 0 else (0.0 if cpu_ticks() is not None else None)


def profile_runners(runners: Mapping[Hashable, Runner], input_shape: Sequence[int] | None = None,
                    *, inputs: np.ndarray | None = None, protocol: TimingProtocol | None = None,
                    progress: ProgressFn | None = None, seed: int = 0,
                    **overrides: Any) -> dict[Hashable, LatencyStats]:
    """Time every runner with the protocol; returns steady-state statistics per id, each with its
    ``switch_in`` dict (None when it never followed another stitch).

    ``inputs`` (or a seeded random tensor of ``input_shape``) is created once and reused: the
    input is already in host memory, as in an application that preprocesses ahead of inference.
    ``overrides`` are protocol fields (``min_runs=...``) applied on top of ``protocol``.
    """
    if not runners:
        return {}
    unknown = set(overrides) - set(_PROTOCOL_KEYS)
    if unknown:
        raise TypeError(f"unknown protocol settings: {', '.join(sorted(unknown))}")
    proto = TimingProtocol.with_overrides(protocol, **overrides)
    if inputs is None:
        if input_shape is None:
            raise TimingError("profiling needs an input shape or an input tensor",
                              hint="pass input_shape=(batch, 3, H, W)")
        inputs = np.random.default_rng(seed).standard_normal(tuple(input_shape)).astype(np.float32)
    x = np.ascontiguousarray(inputs)
    say = progress or (lambda phase, frac, detail: None)
    metric = proto.cv_metric

    for n, (i, r) in enumerate(runners.items()):
        say("warm-up", n / len(runners), str(i))
        warm_up(r, x, proto.warmup_s, proto.warmup_min)

    # The last stitch warmed up ran just before the first visit: that visit is a switch too.
    last: list = [list(runners)[-1] if len(runners) > 1 else None]
    got = measure_blocks(runners, x, proto, lambda f: say("measure", f, ""), seed, last)
    switch: dict[Hashable, list[int]] = {i: list(s.switch_in) for i, s in got.items()}
    def stats_of(i: Hashable, s: _Samples, **kw: Any) -> LatencyStats:
        st = LatencyStats.from_blocks(s.blocks, proto, seed, cpu_steal=_steal(s), **kw)
        st.compute = compute_stats(s.compute, st.median, getattr(runners[i], "compute_source", None))
        return st

    stats = {i: stats_of(i, s) for i, s in got.items()}
    for st in stats.values():
        st.dispersion_history.append(st.dispersion(metric))

    # Set once a probe group shows re-measures not reaching the goal: from then on only stitches
    # whose own re-measure lowered their dispersion are timed again, never one not yet re-timed
    # (a later attempt re-probing those would pay again for what the probe already answered).
    machine_limited = False
    for attempt in range(2, proto.max_remeasure + 2):
        # Only stitches still above the goal whose previous attempt lowered the dispersion.
        shaky = {i: runners[i] for i, s in stats.items()
                 if s.dispersion(metric) > proto.cv_threshold
                 and (len(s.dispersion_history) < 2 and not machine_limited
                      or len(s.dispersion_history) >= 2 and s.dispersion_history[-1]
                      < (1.0 - proto.remeasure_min_gain) * s.dispersion_history[-2])}
        if not shaky:
            break
        say("re-measure", 0.0, f"{len(shaky)} unstable (attempt {attempt})")
        ids = list(shaky)
        size = proto.remeasure_probe or len(ids)
        groups = [ids[k:k + size] for k in range(0, len(ids), size)]
        again: dict[Hashable, _Samples] = {}
        for g, group in enumerate(groups):
            if g:
                hits = sum(LatencyStats.from_blocks(again[i].blocks, proto, seed).dispersion(metric)
                           <= proto.cv_threshold for i in again)
                if hits < REMEASURE_MIN_SUCCESS * len(again):
                    machine_limited = True
                    break  # re-measures are not reaching the goal here: the rest would only cost time
            part = {i: shaky[i] for i in group}
            for i, r in part.items():  # the machine may have been disturbed: warm up again
                warm_up(r, x, proto.warmup_s, proto.warmup_min)
                last[0] = i if len(part) > 1 else None
            again.update(measure_blocks(part, x, proto, lambda f: say("re-measure", f, ""),
                                        seed + attempt, last))
        for i, s in again.items():
            # A fresh attempt replaces the old one (no cherry-picking the best of several).
            history = stats[i].dispersion_history
            # attempts counts the measurements this stitch really had (one per history entry)
            stats[i] = stats_of(i, s, attempts=stats[i].attempts + 1)
            stats[i].dispersion_history = history + [stats[i].dispersion(metric)]
            switch[i].extend(s.switch_in)
    for i, s in stats.items():
        s.unstable = s.dispersion(metric) > proto.cv_threshold
        s.switch_in = switch_in_stats(switch[i], proto.switch_calls)
    say("done", 1.0, "")
    return stats


# ---------------------------------------------------------------- records


def stats_record(stats: LatencyStats, proto: TimingProtocol) -> dict[str, Any]:
    """The timing part every profile record carries (host and device write the same fields)."""
    return {"latency_ms": stats.to_dict(), "switch_in_ms": stats.switch_in,
            "compute_ms": stats.compute,
            "unstable": stats.unstable, "attempts": stats.attempts,
            "dispersion_history": [float(v) for v in stats.dispersion_history],
            "protocol": proto.to_dict()}
