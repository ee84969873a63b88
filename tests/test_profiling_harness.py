"""Timing protocol on real ONNX Runtime sessions of tiny graphs (no timing assertions)."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from esta_export.errors import ProfileError
from esta_export.profiling.harness import (LatencyStats, TimingProtocol, median_ci, profile_runners,
                                           visit_order, warm_up)


def mlp_graph(width: int, depth: int, seed: int = 0) -> bytes:
    """pixels [B,3,8,8] -> flatten -> depth x (MatMul width x width, Relu) -> logits [B,10]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], [helper.make_node("Flatten", ["pixels"], ["h0"], axis=1)]
    dims = [192] + [width] * depth + [10]
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
                                    f"w{i}")
        inits.append(w)
        out = "logits" if i == len(dims) - 2 else f"m{i}"
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [out]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "pixels", TensorProto.FLOAT, ["batch", 3, 8, 8])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    return m.SerializeToString()


class OrtRunner:
    def __init__(self, model: bytes) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.calls = 0

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.session.run(["logits"], {"pixels": x})[0]


def test_stats_from_samples_match_numpy() -> None:
    ns = np.random.default_rng(1).integers(1_000_000, 3_000_000, size=200)
    s = LatencyStats.from_ns(ns)
    ms = ns / 1e6
    assert s.n == 200
    assert s.min == pytest.approx(ms.min()) and s.median == pytest.approx(np.median(ms))
    assert s.p99 == pytest.approx(np.percentile(ms, 99))
    assert s.cv == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert s.seconds == pytest.approx(ns.sum() / 1e9)
    assert set(s.to_dict()) == {"min", "mean", "median", "p90", "p95", "p99", "max", "std", "cv",
                                "trimmed_cv", "robust_cv", "n", "seconds", "blocks", "cpu_steal"}
    mad = np.median(np.abs(ms - np.median(ms)))
    assert s.robust_cv == pytest.approx(1.4826 * mad / np.median(ms))
    # one huge preemption blows up cv but not the robust metrics
    spiky = LatencyStats.from_ns(np.r_[np.full(99, 1_000_000) + np.arange(99) * 1000, 50_000_000])
    assert spiky.cv > 0.5 and spiky.robust_cv < 0.1 and spiky.trimmed_cv < 0.1


def test_protocol_reaches_count_and_time_for_every_stitch() -> None:
    runners = {i: OrtRunner(mlp_graph(16 * (i + 1), i + 1, i)) for i in range(3)}
    stats = profile_runners(runners, (1, 3, 8, 8), warmup_s=0.01, warmup_min=3, min_runs=7,
                            min_seconds=0.02, cv_threshold=10.0)
    for i, s in stats.items():
        assert s.n >= 7 and s.seconds >= 0.02
        assert s.min <= s.median <= s.p90 <= s.p95 <= s.p99
        # Stability depends on the machine's load (a preempted run can push std/mean past 1000%
        # on a busy CI box), so only the rule is checked: an unstable stitch was re-measured.
        assert not s.unstable or s.attempts > 1
        # warm-up calls are not counted in the statistics
        assert runners[i].calls >= s.n + 3


def test_visits_are_blocks_rotated_and_switch_in_kept_apart() -> None:
    order: list[str] = []

    class Tracing(OrtRunner):
        def __init__(self, name: str, model: bytes) -> None:
            super().__init__(model)
            self.name = name

        def infer(self, x):
            order.append(self.name)
            return super().infer(x)

    runners = {n: Tracing(n, mlp_graph(8, 1)) for n in "ABC"}
    stats = profile_runners(runners, (1, 3, 8, 8), warmup_s=0, warmup_min=0, min_runs=12,
                            min_seconds=0, block_calls=4, block_ms=0, switch_calls=1,
                            cv_threshold=10.0, max_remeasure=0)
    # Runs of one stitch: a switch-in call plus a block of 4 (the first visit follows the last
    # stitch's warm-up: a switch too).
    runs = []
    for name in order:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    assert all(n == 5 for _, n in runs) and runs[0][0] != "C"
    # 3 visits each (12 calls in blocks of 4); each round visits every stitch once.
    rounds = [sorted(r[0] for r in runs[k:k + 3]) for k in range(0, len(runs), 3)]
    assert rounds == [["A", "B", "C"]] * 3
    # The order changes across rounds (a fixed order would favour whoever follows the slowest).
    assert len({tuple(r[0] for r in runs[k:k + 3]) for k in range(0, 9, 3)}) > 1
    for name, s in stats.items():
        assert s.n == 12 and s.blocks == 3
        assert s.switch_in == {"median": pytest.approx(s.switch_in["median"]),
                               "max": pytest.approx(s.switch_in["max"]), "n": 3, "calls": 1}
        assert s.switch_in["median"] <= s.switch_in["max"]
        lo, hi = s.median_ci
        assert lo <= s.median <= hi and s.ci_level == 0.95
    # switch-in calls are not in the steady state: 3 x 12 timed + 9 switch-ins, nothing else
    assert len(order) == 36 + 9


def test_visit_order_never_repeats_the_last_stitch() -> None:
    last = None
    orders = []
    for rnd in range(20):
        o = visit_order(["a", "b", "c", "d"], rnd, last)
        assert sorted(o) == ["a", "b", "c", "d"] and o[0] != last
        last = o[-1]
        orders.append(tuple(o))
    assert len(set(orders)) > 5
    assert visit_order(["a"], 3, "a") == ["a"]


def test_median_interval_covers_and_narrows_with_data() -> None:
    rng = np.random.default_rng(0)
    small = [rng.normal(1.0, 0.1, 10) for _ in range(5)]
    big = [rng.normal(1.0, 0.1, 10) for _ in range(80)]
    lo_s, hi_s = median_ci(small, 0.95, 500)
    lo_b, hi_b = median_ci(big, 0.95, 500)
    assert lo_s < 1.0 < hi_s and lo_b < 1.0 < hi_b
    assert hi_b - lo_b < hi_s - lo_s
    # Blocks that disagree (drift between visits) widen the interval beyond an iid bootstrap's.
    drift = [np.full(10, 1.0 + 0.05 * (k % 4)) + rng.normal(0, 0.001, 10) for k in range(8)]
    iid = median_ci([np.concatenate(drift)], 0.95, 500)
    blk = median_ci(drift, 0.95, 500)
    assert blk[1] - blk[0] > iid[1] - iid[0]


def test_remeasure_stops_when_it_does_not_lower_dispersion() -> None:
    class Jittery(OrtRunner):
        """A real session plus a sleep every few calls: a disturbed machine, reproducibly."""

        def infer(self, x):
            import time
            if self.calls % 3 == 0:
                time.sleep(0.004)
            return super().infer(x)

    runners = {"steady": OrtRunner(mlp_graph(8, 1)), "jittery": Jittery(mlp_graph(8, 1))}
    stats = profile_runners(runners, (1, 3, 8, 8), warmup_s=0, warmup_min=2, min_runs=12,
                            min_seconds=0, block_ms=0, cv_threshold=0.5, max_remeasure=5,
                            cv_metric="cv")
    j = stats["jittery"]
    assert j.unstable and j.cv > 0.5
    # Re-measured at least once, then only while an attempt lowered the dispersion.
    assert 2 <= j.attempts <= 6 and len(j.dispersion_history) == j.attempts
    h = j.dispersion_history
    assert all(h[k] < 0.8 * h[k - 1] for k in range(1, len(h) - 1))
    assert j.attempts == 6 or h[-1] >= 0.8 * h[-2]


def test_remeasure_goes_on_only_while_re_measures_reach_the_goal() -> None:
    import time

    class Sleeper:
        """10 ms a call; every third call 100 ms while ``jitter(calls)`` says so. The sleeps
        dominate (cv ~1.2 jittery, far below 0.5 clean even with a few ms of oversleep on a
        loaded machine), so the verdicts do not depend on the machine."""

        def __init__(self, jitter):
            self.calls, self.jitter = 0, jitter

        def infer(self, x):
            time.sleep(0.1 if self.jitter(self.calls) and self.calls % 3 == 0 else 0.01)
            self.calls += 1
            return x

    def jittery():
        return Sleeper(lambda n: True)

    def calming():  # jittery during its first attempt only (warm-up 2 + switch-in 1 + 6 calls)
        return Sleeper(lambda n: n < 9)

    kw = dict(warmup_s=0, warmup_min=2, min_runs=6, min_seconds=0, block_ms=0, block_calls=6,
              cv_threshold=0.5, max_remeasure=1, cv_metric="cv", remeasure_probe=1)
    x = np.zeros((1, 2), np.float32)
    # The probe (first unstable stitch) stays above the goal: the other three are not re-timed.
    stats = profile_runners({k: jittery() for k in "abcd"}, inputs=x, **kw)
    assert [stats[k].attempts for k in "abcd"] == [2, 1, 1, 1]
    assert all(s.unstable for s in stats.values())
    # The probe calms down and reaches the goal: the next is re-timed (1 of 2 reached it), then
    # one more (1 of 3: below half), and the last is left alone.
    stats = profile_runners({"a": calming(), **{k: jittery() for k in "bcd"}}, inputs=x, **kw)
    assert not stats["a"].unstable and [stats[k].attempts for k in "abcd"] == [2, 2, 2, 1]
    # A later attempt does not re-probe the stitches the failed probe spared: with two
    # re-measures allowed, the probe's verdict still stands ('a' did not improve, so it stops too),
    # and attempts counts the measurements each stitch really had.
    stats = profile_runners({k: jittery() for k in "abcd"}, inputs=x, **{**kw, "max_remeasure": 2})
    assert [stats[k].attempts for k in "abcd"] == [2, 1, 1, 1]
    assert all(len(s.dispersion_history) == s.attempts for s in stats.values())
    # remeasure_probe 0: every unstable stitch re-timed, as before
    stats = profile_runners({k: jittery() for k in "abcd"}, inputs=x, **{**kw, "remeasure_probe": 0})
    assert [stats[k].attempts for k in "abcd"] == [2, 2, 2, 2]


def test_warm_up_honours_time_and_count() -> None:
    r = OrtRunner(mlp_graph(8, 1))
    x = np.zeros((1, 3, 8, 8), np.float32)
    assert warm_up(r, x, 0.0, 5) == 5
    assert warm_up(r, x, 0.02, 1) >= 1


def test_protocol_overrides_resolve_in_one_place() -> None:
    base = TimingProtocol(min_runs=11, cv_threshold=0.1)
    p = TimingProtocol.with_overrides(base, min_seconds=0.5, min_runs=None)  # None: not given
    assert (p.min_runs, p.cv_threshold, p.min_seconds) == (11, 0.1, 0.5)
    assert TimingProtocol.with_overrides(min_runs=7).min_runs == 7
    assert p.settings_hash(batch=1) != p.settings_hash(batch=2)
    with pytest.raises(ProfileError):
        TimingProtocol.with_overrides(min_runs=0)
    with pytest.raises(ProfileError, match="stability metric"):
        TimingProtocol.with_overrides(cv_metric="nope")
    with pytest.raises(ProfileError):
        profile_runners({"a": OrtRunner(mlp_graph(8, 1))})
    with pytest.raises(ProfileError, match="confidence"):
        TimingProtocol.with_overrides(ci_level=1.5)


def test_steal_time_is_recorded_per_stitch(monkeypatch) -> None:
    """Each stitch's record says what share of the CPU the hypervisor took while it was timed
    (/proc/stat steal, read around every visit): the cause of drift a shared VM cannot stop."""
    import numpy as np

    from esta_export.runtime import timing

    class R:
        def infer(self, x):
            return x

    ticks = {"steal": 0, "total": 0}

    def fake():  # 1 of every 4 jiffies stolen, advancing on every read
        ticks["steal"] += 1
        ticks["total"] += 4
        return ticks["steal"], ticks["total"]

    proto = timing.TimingProtocol(min_runs=5, min_seconds=0.0, warmup_s=0.0, warmup_min=1,
                                  block_ms=0.0, max_remeasure=0)
    monkeypatch.setattr(timing, "cpu_ticks", fake)
    stats = timing.profile_runners({0: R(), 1: R()}, inputs=np.zeros((1, 2), np.float32), protocol=proto)
    assert all(abs(s.cpu_steal - 0.25) < 1e-9 for s in stats.values())
    assert stats[0].to_dict()["cpu_steal"] == stats[0].cpu_steal
    monkeypatch.setattr(timing, "cpu_ticks", lambda: None)   # not Linux: unknown, not zero
    stats = timing.profile_runners({0: R()}, inputs=np.zeros((1, 2), np.float32), protocol=proto)
    assert stats[0].cpu_steal is None
    monkeypatch.undo()
    real = timing.cpu_ticks()
    if real is not None:  # Linux: the real counters read, steal never above the total
        assert 0 <= real[0] <= real[1]


def test_early_stop_ends_a_pinned_down_stitch_only(monkeypatch) -> None:
    """From early_stop_s on, a stitch whose dispersion meets the goal and whose median is known
    to +-ci_goal stops being timed; a noisy one runs its full min_seconds. Deterministic: each
    runner advances a fake clock by its own call time."""
    from types import SimpleNamespace

    from esta_export.runtime import timing

    clock = {"ns": 0}
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter_ns=lambda: clock["ns"]))

    class Fake:
        def __init__(self, ms_of_call):
            self.calls, self.ms_of_call = 0, ms_of_call

        def infer(self, x):
            clock["ns"] += int(self.ms_of_call(self.calls) * 1e6)
            self.calls += 1
            return x

    def steady():   # 1 ms +-0.5%
        return Fake(lambda n: 1.0 + 0.005 * ((n * 7919) % 3 - 1))

    def noisy():    # spread over 1.0-1.9 ms: robust CV far above 5%
        return Fake(lambda n: 1.0 + ((n * 7919) % 10) / 10)

    x = np.zeros((1, 2), np.float32)
    kw = dict(warmup_s=0, warmup_min=1, min_runs=20, min_seconds=1.0, block_ms=50, block_calls=5,
              max_remeasure=0, early_stop_s=0.2)
    stats = timing.profile_runners({"s": steady(), "n": noisy()}, inputs=x, **kw)
    assert 0.2 <= stats["s"].seconds < 0.4 and not stats["s"].unstable
    assert stats["n"].seconds >= 1.0 and stats["n"].unstable
    lo, hi = stats["s"].median_ci
    assert (hi - lo) / 2 <= 0.02 * stats["s"].median
    off = timing.profile_runners({"s": steady()}, inputs=x, **{**kw, "early_stop_s": 0})
    assert off["s"].seconds >= 1.0
    with pytest.raises(ProfileError, match="early_stop_s"):
        timing.TimingProtocol.with_overrides(ci_goal=0)


def test_runtime_compute_time_is_kept_beside_the_wall_time() -> None:
    """A runner that reports the runtime's own time per call (OpenVINO's InferRequest.latency)
    gets ``compute_ms`` from its steady-state calls only, with the wall-minus-compute overhead;
    one that reports none gets None (never a made-up number)."""
    class Reporting(OrtRunner):
        compute_source = "test: half the wall time"

        def infer(self, x):
            t0 = time.perf_counter_ns()
            out = super().infer(x)
            self.last = (time.perf_counter_ns() - t0) // 2
            return out

        def compute_ns(self):
            return self.last

    rep, plain = Reporting(mlp_graph(32, 2)), OrtRunner(mlp_graph(16, 1, 1))
    stats = profile_runners({"r": rep, "p": plain}, (1, 3, 8, 8), warmup_s=0, warmup_min=2,
                            min_runs=20, min_seconds=0, block_calls=5, block_ms=0, switch_calls=1,
                            cv_threshold=10.0, max_remeasure=0)
    c = stats["r"].compute
    assert c["n"] == stats["r"].n == 20 and c["source"] == "test: half the wall time"
    assert 0 < c["median"] < stats["r"].median        # half of each call, so below the wall median
    assert c["overhead_ms"] == pytest.approx(stats["r"].median - c["median"])
    assert stats["p"].compute is None
    from esta_export.runtime.timing import stats_record

    proto = TimingProtocol()
    assert stats_record(stats["r"], proto)["compute_ms"] == c
    assert stats_record(stats["p"], proto)["compute_ms"] is None
