"""The deadline governor: step down, step up, hysteresis, switch-in accounting, warm set, threads.

Real bundles (ONNX Runtime runs every call) on a scripted device: a fake clock that advances by the
latency the test sets per stitch and load, per thread, so no assertion ever depends on wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fixtures.family import FamilySpec, make_family
from esta_export.bundle.writer import write_bundle
from esta_export.runtime import Bundle, BundleError, NoStitchFitsError
from esta_export.runtime.governor import Governor, summary_lines

# Front of the test bundle, fastest first: id -> (reference median ms, validated accuracy)
FRONT = {0: (1.0, 0.60), 2: (2.0, 0.70), 3: (3.0, 0.80), 4: (4.0, 0.85), 1: (5.0, 0.90)}
ORDER = [0, 2, 3, 4, 1]
X = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _write_latencies(bundle: Path, switch_in: dict | None = None, by_mode: dict | None = None) -> None:
    """Give the bundle measured latencies and accuracies (the manifest itself is not hashed)."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    for s in m["stitches"]:
        ref, acc = FRONT[s["id"]]
        s["latency"] = {"median": ref, "p95": ref * 1.1, "source": "measured"}
        if switch_in is not None and s["id"] in switch_in:
            s["latency"]["switch_in_ms"] = switch_in[s["id"]]
        if by_mode is not None:
            s["latency"]["by_power_mode"] = {mode: {"median": ref * f} for mode, f in by_mode.items()}
        s["accuracy"], s["accuracy_source"] = acc, "test fixture"
    path.write_text(json.dumps(m))



@pytest.fixture(scope="module")
def family(tmp_path_factory):
    job = make_family(tmp_path_factory.mktemp("job"), FamilySpec(depth=4))
    return job


def _bundle(family, tmp_path, **kw) -> Path:
    out = write_bundle(family, "cpu", tmp_path / "bundle")
    _write_latencies(out, **kw)
    return out


@pytest.fixture
def bundle_dir(family, tmp_path):
    return _bundle(family, tmp_path, switch_in={sid: ref for sid, (ref, _) in FRONT.items()})


class Device:
    """A scripted device: per-thread fake time, latency = reference x load (x switch_in on the
    first call after the stitch changed in that thread)."""

    def __init__(self, load: float = 1.0, actual: dict | None = None, first_factor: float = 1.0,
                 interrupt_every: int = 0, interrupt_ms: float = 0.0) -> None:
        self.load = load
        self.interrupt_every, self.interrupt_ms, self._n = interrupt_every, interrupt_ms, 0
        self.actual = {sid: ref for sid, (ref, _) in FRONT.items()} if actual is None else actual
        self.first_factor = first_factor
        self._local = threading.local()

    def clock(self) -> float:
        return getattr(self._local, "t", 0.0)

    def ran(self, sid: int) -> None:
        lat = self.actual[sid] * self.load
        if getattr(self._local, "last", None) != sid:
            lat *= self.first_factor
        self._local.last = sid
        self._n += 1
        if self.interrupt_every and self._n % self.interrupt_every == 0:
            lat += self.interrupt_ms  # another process's time slice: the same whatever the stitch
        self._local.t = self.clock() + lat / 1e3


def _open(path: Path, device: Device) -> Bundle:
    class OnDevice(Bundle):  # the real bundle; the device's time passes as the test says
        def run(self, batch, stitch_id=None):
            out = super().run(batch, stitch_id)
            device.ran(stitch_id if stitch_id is not None else self.active.id)
            return out

    return OnDevice.open(path, verify=False)


def _gov(path, device, deadline=5.0, **kw) -> Governor:
    kw.setdefault("background", False)
    kw.setdefault("warm", 1)
    # the scenarios below are sized for these thresholds (the defaults are checked apart)
    kw.setdefault("window", 32)
    kw.setdefault("up_at", 0.7)
    kw.setdefault("down_at", 0.9)
    return Governor(_open(path, device), deadline_ms=deadline, clock=device.clock, power_mode=None, **kw)


def _run(g: Governor, n: int) -> list:
    return [g.infer(X) for _ in range(n)]


def test_front_order_and_start(bundle_dir):
    g = _gov(bundle_dir, Device(), deadline=5.0)
    assert g.front == ORDER
    # most accurate stitch whose measured latency fits under up_at x deadline (0.7 x 5 = 3.5 ms)
    assert g.active == 3 and g.bundle.active.id == 3
    assert set(g.bundle.loaded) == {2, 3, 4}  # warm=1: the neighbours


def test_shared_weights_keep_the_whole_front_warm_by_default(bundle_dir):
    dev = Device()
    g = Governor(_open(bundle_dir, dev), deadline_ms=5.0, clock=dev.clock, background=False, power_mode=None)
    assert g.bundle.share_weights and g.warm is None and g.bundle.loaded == sorted(ORDER)


def test_defaults_step_down_and_back_up(bundle_dir):
    dev = Device()
    g = Governor(_open(bundle_dir, dev), deadline_ms=5.0, clock=dev.clock, background=False, power_mode=None)
    assert (g.window, g.down_at, g.up_at, g.hold) == (64, 0.95, 0.85, 64)
    assert g.active == 4  # 4 ms <= 0.85 x 5
    _run(g, 100)
    dev.load = 1.5  # stitch 4: 6 ms misses; stitch 3: 4.5 ms <= 4.75 fits
    calls = _run(g, 200)
    assert g.active == 3 and sum(c.missed for c in calls) == 4  # the 4th slowest of 64 moves the p95
    dev.load = 1.0
    _run(g, 200)
    assert g.active == 4 and g.stats()["switches"] == 2


def test_steps_down_when_load_rises_and_then_holds(bundle_dir):
    dev = Device()
    g = _gov(bundle_dir, dev, deadline=5.0)
    _run(g, 100)
    assert g.active == 3 and g.stats()["misses"] == 0
    dev.load = 2.0  # stitch 3 now takes 6 ms: misses; stitch 2 takes 4 ms (0.8 x deadline): fits
    calls = _run(g, 200)
    assert g.active == 2
    first_ok = next(i for i, c in enumerate(calls) if not c.missed and c.stitch_id == 2)
    assert sum(c.missed for c in calls) <= 2 and first_ok <= 3  # two slow calls move the p95 of 32
    assert all(not c.missed for c in calls[first_ok:])
    s = g.stats()
    assert s["switches_down"] == 1 and s["switches_up"] == 0  # held: 4 ms is above up_at, below down_at


def test_steps_down_several_stitches_at_once_when_loaded(bundle_dir):
    dev = Device()
    g = _gov(bundle_dir, dev, deadline=5.0, warm=None)  # every stitch loaded: any can be the target
    _run(g, 50)
    dev.load = 4.0  # only stitch 0 (4 ms) fits
    _run(g, 50)
    assert g.active == 0 and g.stats()["switches_down"] == 1


def test_steps_up_when_load_falls(bundle_dir):
    dev = Device(load=2.0)
    g = _gov(bundle_dir, dev, deadline=5.0)
    _run(g, 100)
    assert g.active == 2
    dev.load = 1.0
    calls = _run(g, 30)
    assert g.active == 2  # not before the window forgot the load (p95 of 32: the 2nd slowest)
    _run(g, 200)
    # 2 -> 3 (predicted 3 ms <= 3.5); 4 ms predicted for stitch 4 is above up_at x deadline: stays
    assert g.active == 3 and g.stats()["misses"] == 3  # the cold first call + 2 slow ones at the start
    assert not any(c.missed for c in calls)


def test_climbs_to_the_most_accurate_when_the_deadline_allows(bundle_dir):
    dev = Device(load=2.8)
    g = _gov(bundle_dir, dev, deadline=10.0)
    _run(g, 100)
    assert g.active == 3  # 8.4 ms <= 0.9 x 10, 11.2 ms would miss
    dev.load = 1.0
    _run(g, 400)
    assert g.active == 1 and g.stats()["switches_up"] >= 2  # 5 ms <= 7 ms: the top of the front


def test_hysteresis_holds_between_the_thresholds(bundle_dir):
    # load 1.3: stitch 3 runs 3.9 ms (between up 3.5 and down 4.5 of a 5 ms deadline), stitch 4
    # would run 5.2 ms: the governor must neither step up nor down
    dev = Device(load=1.3)
    g = _gov(bundle_dir, dev, deadline=5.0, start=3)
    _run(g, 2000)
    s = g.stats()
    assert s["switches"] == 0 and s["misses"] == 0 and g.active == 3


def test_flapping_is_damped_when_the_slower_stitch_is_slower_than_recorded(bundle_dir):
    # the manifest says stitch 4 is 4/3 of stitch 3; on this device it is 2x: every step up misses
    actual = {sid: ref for sid, (ref, _) in FRONT.items()}
    actual[4] = 6.0
    dev = Device(actual=actual)
    g = _gov(bundle_dir, dev, deadline=6.0, start=3)  # 3 ms at stitch 3; 4 ms predicted for 4 <= 4.2
    _run(g, 6000)
    s = g.stats()
    # without back-off: one flap every ~34 calls (~175); with it the dwell doubles each time
    assert 1 <= s["flaps"] <= 8 and s["switches_up"] <= 9
    assert s["misses"] <= 3 * s["switches_up"]
    assert s["per_stitch"][3]["calls"] > 0.95 * s["calls"]


def test_interruptions_no_stitch_avoids_do_not_drag_it_down(bundle_dir):
    # every 10th call waits 8 ms more for the CPU: 10% of calls miss on any stitch
    dev = Device(interrupt_every=10, interrupt_ms=8.0)
    g = _gov(bundle_dir, dev, deadline=5.0)  # 11 ms on stitch 3, 9 ms on the fastest: both miss
    _run(g, 500)
    assert g.active == 3 and g.stats()["switches"] == 0
    s = g.stats()
    assert 0.09 <= s["miss_rate"] <= 0.11  # what the machine costs, on any stitch


def test_switch_in_latency_blocks_a_step_up_that_would_miss(family, tmp_path):
    # stitch 4's first call after a switch takes 3x its steady latency (manifest: 12 ms)
    path = _bundle(family, tmp_path, switch_in={0: 1.0, 2: 2.0, 3: 3.0, 4: 12.0, 1: 5.0})
    dev = Device()
    g = _gov(path, dev, deadline=6.0, start=3)  # steady 4 ms would fit (<= 4.2): first call 12 would not
    _run(g, 500)
    s = g.stats()
    assert g.active == 3 and s["switches"] == 0
    assert s["per_stitch"][4]["switch_in_ratio"] == pytest.approx(3.0)
    assert s["per_stitch"][4]["switch_in_source"] == "manifest"
    # with a cheap switch-in the same step is taken
    path2 = _bundle(family, tmp_path / "b2", switch_in={sid: ref for sid, (ref, _) in FRONT.items()})
    g2 = _gov(path2, Device(), deadline=6.0, start=3)
    _run(g2, 500)
    assert g2.active == 4


def test_switch_in_calls_are_counted_apart_and_kept_out_of_the_window(bundle_dir):
    dev = Device(first_factor=1.4)  # first call after a switch: 1.4x
    g = _gov(bundle_dir, dev, deadline=5.0)
    _run(g, 100)
    dev.load = 2.0
    calls = _run(g, 100)
    s = g.stats()
    first = [c for c in calls if c.switch_in]
    assert len(first) == 1 and first[0].stitch_id == 2 and first[0].latency_ms == pytest.approx(5.6)
    assert first[0].missed and s["switch_in_misses"] == 1
    # the initial call is a cold call too: 2 switch-in calls, and the slow one did not push it further down
    assert s["switch_in_calls"] == 2 and g.active == 2


def test_switch_in_measured_at_load_when_the_manifest_lacks_it(family, tmp_path):
    path = _bundle(family, tmp_path)  # no switch_in_ms anywhere
    g = _gov(path, Device(first_factor=2.0), deadline=5.0)
    for sid in ORDER:
        p = g.stats()["per_stitch"][sid]
        assert p["switch_in_source"] == "measured at load"
        assert p["switch_in_ratio"] == pytest.approx(2.0)
    assert len(g.bundle.loaded) <= 3  # measuring did not leave the whole front loaded


def test_warm_set_bounds_memory_and_neighbours_are_loaded(bundle_dir):
    dev = Device()
    g = _gov(bundle_dir, dev, deadline=5.0, warm=1)
    seen = []
    for load in (1.0, 2.0, 4.0, 1.0):
        dev.load = load
        for _ in range(150):
            g.infer(X)
            seen.append(len(g.bundle.loaded))
            i = g.front.index(g.active)
            assert {g.front[j] for j in range(max(0, i - 1), min(len(g.front), i + 2))} <= set(g.bundle.loaded)
    assert max(seen) <= 3


def test_background_warming_loads_the_new_neighbours(bundle_dir):
    dev = Device()
    g = _gov(bundle_dir, dev, deadline=5.0, warm=1, background=True)
    try:
        _run(g, 50)
        dev.load = 2.0
        _run(g, 50)
        assert g.active == 2
        for _ in range(500):  # the warming thread finishes on its own schedule
            if set(g.bundle.loaded) == {0, 2, 3}:
                break
            threading.Event().wait(0.01)
        assert set(g.bundle.loaded) == {0, 2, 3}
    finally:
        g.close()


def test_threads_share_one_governor(bundle_dir):
    dev = Device()
    g = _gov(bundle_dir, dev, deadline=5.0, warm=None)
    refs = {sid: g.bundle.run(X, stitch_id=sid) for sid in ORDER}
    results, errors = [], []

    def worker(load: float) -> None:
        try:
            dev.load = load  # per-thread time; the load is shared and changes under everyone
            for _ in range(300):
                results.append(g.infer(X))
        except Exception as err:  # noqa: BLE001 - asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(load,)) for load in (1.0, 2.0, 1.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = g.stats()
    assert s["calls"] == len(results) == 1200
    assert sum(p["calls"] for p in s["per_stitch"].values()) == 1200
    assert s["misses"] == sum(c.missed for c in results)
    assert s["switches"] == s["switches_up"] + s["switches_down"] == len(g.events())
    for c in results:  # every answer is exactly the output of the stitch it says ran
        assert np.array_equal(c.logits, refs[c.stitch_id])
    assert sum(p["busy_ms"] for p in s["per_stitch"].values()) == pytest.approx(sum(c.latency_ms for c in results))


def test_stats_report_calls_misses_switches_time_and_accuracy(bundle_dir):
    dev = Device()
    g = _gov(bundle_dir, dev, deadline=5.0, trace=1000)
    _run(g, 100)
    dev.load = 2.0
    _run(g, 100)
    s = g.stats()
    json.dumps(s)  # JSON-able as it is
    assert s["calls"] == 200 and s["deadline_ms"] == 5.0 and s["quantile"] == 0.95
    assert s["switches"] == 1 and s["active"] == 2 and s["front"] == ORDER
    p3, p2 = s["per_stitch"][3], s["per_stitch"][2]
    assert p3["calls"] + p2["calls"] == 200
    for sid in (2, 3):
        assert s["per_stitch"][sid]["busy_ms"] == pytest.approx(
            sum(c["latency_ms"] for c in g.trace() if c["stitch"] == sid))
    assert p2["mean_ms"] == pytest.approx(4.0)
    assert s["mean_accuracy"] == pytest.approx((p3["calls"] * 0.8 + p2["calls"] * 0.7) / 200)
    assert s["miss_rate"] == pytest.approx(s["misses"] / 200)
    ev = g.events()
    assert len(ev) == 1 and ev[0]["from"] == 3 and ev[0]["to"] == 2 and ev[0]["reason"] == "down"
    assert len(g.trace()) == 200 and {"t", "stitch", "latency_ms", "missed", "switch_in"} <= set(g.trace()[0])
    lines = summary_lines(s)
    assert "200 calls under a 5 ms deadline" in lines[0] and "validated accuracy" in lines[-1]


def test_start_from_the_latencies_of_this_power_mode(family, tmp_path):
    # measured 2x slower in 15W than the manifest's default numbers (not verified on hardware)
    path = _bundle(family, tmp_path, switch_in={sid: ref for sid, (ref, _) in FRONT.items()},
                   by_mode={"MAXN": 1.0, "15W": 2.0})
    dev = Device()
    g = Governor(_open(path, dev), deadline_ms=5.0, clock=dev.clock, background=False, power_mode="15W")
    # start: the most accurate stitch measured within 0.85 x 5 ms in that mode
    assert g.active == 2 and any("15W" in n for n in g.stats()["notes"])  # 15W: 4 ms; stitch 3 6 ms
    g2 = Governor(_open(path, dev), deadline_ms=5.0, clock=dev.clock, background=False, power_mode="MAXN")
    assert g2.active == 4


@pytest.mark.parametrize("kw, match", [
    ({"deadline_ms": 0}, "deadline_ms"), ({"deadline_ms": float("nan")}, "deadline_ms"),
    ({"deadline_ms": -3}, "deadline_ms"), ({"deadline_ms": "fast"}, "deadline_ms"),
    ({"deadline_ms": 5, "quantile": 1.5}, "quantile"), ({"deadline_ms": 5, "window": 1}, "window"),
    ({"deadline_ms": 5, "up_at": 0.9, "down_at": 0.8}, "up_at"), ({"deadline_ms": 5, "warm": -1}, "warm"),
    ({"deadline_ms": 5, "switch_in": "guess"}, "switch_in"),
])
def test_bad_arguments_are_one_line_errors(bundle_dir, kw, match):
    dev = Device()
    with pytest.raises(BundleError, match=match) as err:
        Governor(_open(bundle_dir, dev), clock=dev.clock, background=False, power_mode=None, **kw)
    assert "\n" not in str(err.value)


def test_unknown_start_and_a_bundle_without_latencies(family, tmp_path, bundle_dir):
    dev = Device()
    with pytest.raises(NoStitchFitsError, match="not in this bundle"):
        _gov(bundle_dir, dev, start=99)
    path = write_bundle(family, "cpu", tmp_path / "nolat")
    m = json.loads((path / "manifest.json").read_text())
    for s in m["stitches"]:
        s["latency"] = None
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(NoStitchFitsError, match="no stitch .* recorded latency"):
        _gov(path, dev)


BLOCKER = r"""
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "esta_export", "onnxscript"):
            raise ImportError(f"{name} is blocked: the app must run without it")
        return None
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "esta_export"))
    print("HEAVY", heavy)
"""


def test_app_deadline_mode_runs_with_numpy_and_the_runtime_only(bundle_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", BLOCKER, str(bundle_dir / "app.py"), "--deadline-ms", "50",
                           "--runs", "200"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "governor: 200 calls under a 50 ms deadline" in out and "switches" in out
    assert "validated accuracy of the stitches used" in out and "test fixture" in out
    assert "HEAVY []" in out


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_app_bad_deadline_is_one_line(bundle_dir, tmp_path, value):
    proc = subprocess.run([sys.executable, "-I", str(bundle_dir / "app.py"), f"--deadline-ms={value}", "--runs", "5"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "deadline" in proc.stderr, proc.stderr
