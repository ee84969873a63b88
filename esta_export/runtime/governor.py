"""Hold a latency deadline by switching stitches as the device's load changes.

A bundle's latencies were measured once, on a quiet device. At run time another process takes the
CPU, a camera pipeline shares the GPU, a Jetson throttles when it heats up: the latency the
application sees moves, and a fixed stitch either misses its deadline or wastes accuracy.
:class:`Governor` runs the bundle's front (its stitches ordered by latency, each more accurate
than every faster one) and moves along it:

- it keeps a window of the active stitch's observed latencies and a quantile of them (nearest
  rank: with ``window=64, quantile=0.95`` four slow calls in the last 64 move it; a shorter window
  reacts to every pair of scheduler hiccups, a longer one forgets a past load more slowly);
- it steps **down** as soon as that quantile passes ``down_at * deadline`` (to the slowest loaded
  stitch predicted to fit, scaling the observation by the manifest's latency ratio between the
  two stitches);
- it steps **up** when the prediction for a slower stitch, from the same observation, fits under
  ``up_at * deadline`` (to the slowest such loaded stitch, one hop), not before ``hold`` calls on
  the current stitch;
- hysteresis: ``up_at < down_at``, the dwell ``hold``, the window's memory of the slow calls that
  caused a step down, and a back-off that doubles the dwell each time a step up is undone within
  two windows (a flap), halving again while the stitch holds;
- a switch must not cause the miss: the first call after a switch is predicted from the stitch's
  switch-in latency (``latency.switch_in_ms`` in the manifest, else measured at construction) and
  the switch is taken only if that prediction fits too; such calls are counted apart
  (``switch_in_calls``/``switch_in_misses``) and kept out of the window;
- no step down where no stitch would miss less: delays from interruptions (another process's
  time slice) cost every stitch the same (see :meth:`Governor._futile`);
- neighbours stay loaded (``warm`` stitches each side of the active one, loaded by a background
  thread), so a switch is a pointer swap and memory is bounded by ``2 * warm + 1`` sessions
  (default: the whole front when the bundle shares its weights, where a session costs little).

Thread-safe like :meth:`Bundle.run`: any number of threads may call :meth:`run`; the bookkeeping
runs under a lock, inference outside it. ``clock`` (seconds, default ``time.perf_counter``) is
injectable so tests script the latencies.

On a Jetson the governor reads the power mode (``nvpmodel -q``, the profiler's probe in
runtime/environment.py) and, where the manifest holds latencies measured in that mode
(``latency.by_power_mode[NAME]``; nothing writes that key yet), starts from and scales by those;
temperatures are reported in :meth:`stats`. NOT verified on hardware.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import BundleError, NoStitchFitsError

@dataclass(frozen=True)
class Call:
    """One governed inference: its logits and what the governor saw."""
    logits: np.ndarray
    stitch_id: int
    latency_ms: float
    missed: bool
    switch_in: bool  # the first call on this stitch after a switch
    t: float  # clock time at the end of the call, seconds


@dataclass
class _Level:
    """One stitch of the front, with what the governor knows and has seen of it."""
    id: int
    route: str
    ref_ms: float  # reference latency (median) the ratios between stitches come from
    accuracy: float | None
    accuracy_source: str | None
    switch_in_ratio: float = 1.0  # first call after a switch / steady call
    switch_in_source: str = "none"
    calls: int = 0
    misses: int = 0
    busy_ms: float = 0.0


def _check_number(name: str, value, low: float, high: float, *, low_open: bool = True) -> float:
    want = (f"pass a finite number above {low:g}" if math.isinf(high)
            else f"pass a number in ({low:g}, {high:g}]")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BundleError(f"{name}={value!r} is not a number", hint=want) from None
    if not math.isfinite(v) or v > high or v < low or (low_open and v == low):
        raise BundleError(f"{name}={value!r} is out of range", hint=want)
    return v


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise BundleError(f"{name}={value!r} is not an integer >= {low}")
    return int(value)


def read_power_mode() -> dict | None:
    """The Jetson power mode ({"id", "name"}), None elsewhere (the profiler's probe).
    NOT verified on hardware."""
    from .environment import power_mode

    return power_mode()


def max_temperature_c() -> float | None:
    """Hottest thermal zone in degrees C (Linux sysfs), None where there is none."""
    temps = []
    for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            temps.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def pareto_levels(stitches: Iterable, ref: Callable) -> list:
    """The stitches each more accurate than every faster one, fastest first (``ref(s)``: latency).

    Where accuracy is unknown, more FLOPs stand in for more accurate (as ``Bundle.select``).
    """
    known = [s for s in stitches if ref(s) is not None]
    use_acc = all(s.accuracy is not None for s in known)

    def quality(s):
        return s.accuracy if use_acc else float(s.flops or 0)

    front, best = [], -math.inf
    for s in sorted(known, key=lambda s: (ref(s), -quality(s))):
        if quality(s) > best:
            front.append(s)
            best = quality(s)
    return front


class Governor:
    """Run a bundle under a latency deadline, switching along its front as the load changes.

    bundle: an open :class:`Bundle`. deadline_ms: the per-inference deadline. quantile: the share
    of calls that should meet it, and the quantile of the window that is watched.
    stitches: ids to govern (default: the bundle's front by latency and accuracy).
    window: latencies kept of the active stitch. down_at / up_at: fractions of the deadline at
    which to step down / up (``up_at < down_at``: hysteresis; defaults 0.95 / 0.85).
    hold: calls on a stitch before a step up (default: ``window``).
    warm: stitches kept loaded each side of the active one (None: all; "auto": all when the
    bundle shares weights, else 1).
    start: first stitch id (default: the most accurate predicted to fit under ``up_at``).
    switch_in: "auto" (manifest ``latency.switch_in_ms``, measured here where absent), "measure"
    (always measure here), or "manifest" (absent means the same as a steady call).
    clock: seconds, monotonic. background: load neighbours in a thread (False: in the calling
    thread after a switch, deterministic for tests). trace: keep the last N calls (see
    :meth:`trace`). power_mode: "auto" (read on a Jetson), None (ignore), or a mode name.
    """

    def __init__(self, bundle, deadline_ms: float, quantile: float = 0.95, *,
                 stitches: Iterable[int] | None = None, window: int = 64, down_at: float = 0.95,
                 up_at: float = 0.85, hold: int | None = None, warm: int | str | None = "auto",
                 start: int | None = None, switch_in: str = "auto",
                 clock: Callable[[], float] = time.perf_counter, background: bool = True,
                 trace: int = 0, power_mode: str | None = "auto") -> None:
        self.bundle = bundle
        self.deadline_ms = _check_number("deadline_ms", deadline_ms, 0.0, math.inf)
        self.quantile = _check_number("quantile", quantile, 0.0, 1.0)
        self.window = _check_int("window", window, 2)
        self.down_at = _check_number("down_at", down_at, 0.0, 1.0)
        self.up_at = _check_number("up_at", up_at, 0.0, self.down_at)
        if self.up_at >= self.down_at:
            raise BundleError(f"up_at={up_at} must be below down_at={down_at}",
                              hint="leave a gap between them (hysteresis), e.g. up_at=0.85, down_at=0.95")
        self.hold = self.window if hold is None else _check_int("hold", hold, 1)
        if warm == "auto":
            # With shared weights a loaded stitch costs its graph and activations only (the whole
            # demo front: 1.2x the largest stitch's memory), and loading a neighbour while the
            # stream runs takes CPU from it; private weights (TensorRT engines, OpenVINO) keep
            # only the neighbours.
            warm = None if getattr(bundle, "share_weights", False) else 1
        self.warm = None if warm is None else _check_int("warm", warm, 0)
        if switch_in not in ("auto", "measure", "manifest"):
            raise BundleError(f"switch_in={switch_in!r} is not 'auto', 'measure' or 'manifest'")
        self.clock = clock
        self.background = bool(background)
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._trace: deque = deque(maxlen=_check_int("trace", trace, 0))
        self._events: list[dict] = []

        self.power_mode = self._read_power_mode(power_mode)
        self._levels = self._front(stitches)
        if not self._levels:
            raise NoStitchFitsError("no stitch in this bundle has a recorded latency to govern by",
                                    hint="profile on the device (esta-export profile) and re-bundle")
        self._index = {lv.id: i for i, lv in enumerate(self._levels)}
        self._switch_in_from_manifest(switch_in)

        pos = self._start_position(start)
        self._set_warm(pos)
        if switch_in == "measure" or any(lv.switch_in_source == "none" for lv in self._levels):
            self._measure_switch_in()
            self._set_warm(pos)
        self._pos = pos
        self._window: deque = deque(maxlen=self.window)
        self._since_switch = 0
        self._pending_switch_in = True  # the very first call is a cold call too
        self._backoff = 1
        self._last_up: tuple[int, int] | None = None  # (call index, level we came up from)
        self.calls = self.misses = self.switches = self.switches_up = self.switches_down = 0
        self.switch_in_calls = self.switch_in_misses = self.flaps = 0
        self._quantile_ms: float | None = None
        self._warm_event = threading.Event()
        self._warm_target = pos
        self._closed = False
        self._warmer = None
        if self.background:
            self._warmer = threading.Thread(target=self._warm_loop, name="esta-governor-warm", daemon=True)
            self._warmer.start()
        bundle.activate(self._levels[pos].id)

    # -- set-up --------------------------------------------------------------------------------
    def _read_power_mode(self, wanted: str | None) -> str | None:
        if wanted is None:
            return None
        if wanted != "auto":
            return str(wanted)
        try:
            mode = read_power_mode()
        except Exception:  # noqa: BLE001 - a probe that fails means "unknown", never a crash
            mode = None
        return None if not mode else mode.get("name")

    def _ref_stats(self, entry: dict) -> dict:
        lat = entry.get("latency") or {}
        by_mode = lat.get("by_power_mode")
        if self.power_mode and isinstance(by_mode, dict) and isinstance(by_mode.get(self.power_mode), dict):
            return by_mode[self.power_mode]
        return lat

    def _front(self, ids: Iterable[int] | None) -> list[_Level]:
        all_stitches = self.bundle.stitches()
        if ids is not None:
            wanted = [int(i) for i in ids]
            for i in wanted:
                self.bundle.stitch(i)  # unknown id: one clear line
            all_stitches = [s for s in all_stitches if s.id in set(wanted)]

        def ref(s):
            v = self._ref_stats(s.info).get("median")
            try:
                v = float(v)
            except (TypeError, ValueError):
                return None
            return v if math.isfinite(v) and v > 0 else None

        missing = sorted(s.id for s in all_stitches if ref(s) is None)
        if missing:
            self.notes.append(f"stitches {missing} have no recorded latency and are not governed")
        if self.power_mode:
            modes = {((s.info.get("latency") or {}).get("by_power_mode") or {}).get(self.power_mode) is not None
                     for s in all_stitches}
            self.notes.append(f"power mode {self.power_mode}: "
                              + ("latencies measured in this mode" if modes == {True}
                                 else "no latencies recorded for this mode; using the manifest's")
                              + " (not verified on hardware)")
        return [_Level(s.id, s.route, ref(s), s.accuracy, s.accuracy_source)
                for s in pareto_levels(all_stitches, ref)]

    def _switch_in_from_manifest(self, mode: str) -> None:
        if mode == "measure":
            return
        for lv in self._levels:
            lat = self._ref_stats(self.bundle.stitch(lv.id).info)
            v = lat.get("switch_in_ms")
            if isinstance(v, dict):  # a profile record's {"median", "max", ...}
                v = v.get("median")
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = None
            if v is not None and math.isfinite(v) and v > 0:
                lv.switch_in_ratio, lv.switch_in_source = max(1.0, v / lv.ref_ms), "manifest"
            elif mode == "manifest":
                lv.switch_in_ratio, lv.switch_in_source = 1.0, "assumed steady"

    def _measure_switch_in(self, repeats: int = 3, steady: int = 5) -> None:
        """First call after switching from a neighbour / median steady call, per stitch, measured
        here with the governor's clock. Keeps at most two extra sessions loaded at a time."""
        x = self._probe_input()
        n = len(self._levels)
        for i, lv in enumerate(self._levels):
            if lv.switch_in_source == "manifest" or n < 2:
                if n < 2:
                    lv.switch_in_source = "single stitch"
                continue
            other = self._levels[i - 1 if i > 0 else 1].id
            firsts, steadies = [], []
            for _ in range(repeats):
                self.bundle.run(x, stitch_id=other)
                self.bundle.run(x, stitch_id=other)
                t0 = self.clock()
                self.bundle.run(x, stitch_id=lv.id)
                firsts.append(self.clock() - t0)
            for _ in range(steady):
                t0 = self.clock()
                self.bundle.run(x, stitch_id=lv.id)
                steadies.append(self.clock() - t0)
            med_first, med_steady = float(np.median(firsts)), float(np.median(steadies))
            lv.switch_in_ratio = max(1.0, med_first / med_steady) if med_steady > 0 else 1.0
            lv.switch_in_source = "measured at load"
            self._unload_outside(self._warm_ids(self._start_guess), keep=(self._levels[i].id,
                                 self._levels[min(i + 1, n - 1)].id))

    def _probe_input(self) -> np.ndarray:
        shape = list(self.bundle.input_spec.get("shape") or [1, 3, 224, 224])
        shape = [1] + [int(d) if isinstance(d, int) else 224 for d in shape[1:]]
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def _start_position(self, start: int | None) -> int:
        if start is not None:
            self.bundle.stitch(start)
            if int(start) not in self._index:
                raise NoStitchFitsError(f"stitch {start} is not on the governed front",
                                        hint=f"start from one of {[lv.id for lv in self._levels]}")
            pos = self._index[int(start)]
        else:
            fits = [i for i, lv in enumerate(self._levels) if lv.ref_ms <= self.up_at * self.deadline_ms]
            pos = fits[-1] if fits else 0
            if not fits:
                self.notes.append(f"even the fastest stitch ({self._levels[0].id}, {self._levels[0].ref_ms:.3g} ms "
                                  f"measured) does not fit {self.up_at:g} x the {self.deadline_ms:g} ms deadline")
        self._start_guess = pos
        return pos

    # -- warm set ------------------------------------------------------------------------------
    def _warm_ids(self, pos: int) -> list[int]:
        if self.warm is None:
            return [lv.id for lv in self._levels]
        lo, hi = max(0, pos - self.warm), min(len(self._levels), pos + self.warm + 1)
        # nearest first: the neighbour a switch goes to next loads before the far ones
        return sorted((lv.id for lv in self._levels[lo:hi]), key=lambda sid: abs(self._index[sid] - pos))

    def _unload_outside(self, keep_ids: list[int], keep: Iterable[int] = ()) -> None:
        keep_set = set(keep_ids) | set(keep)
        active = self.bundle.active
        if active is not None:
            keep_set.add(active.id)
        for sid in self.bundle.loaded:
            if sid not in keep_set:
                try:
                    self.bundle.unload(sid)
                except BundleError:  # became active meanwhile (another caller): keep it
                    pass

    def _set_warm(self, pos: int) -> None:
        ids = self._warm_ids(pos)
        for sid in ids:
            self.bundle.load(sid)
        self._unload_outside(ids)

    def _warm_loop(self) -> None:
        while True:
            self._warm_event.wait()
            self._warm_event.clear()
            if self._closed:
                return
            try:
                self._set_warm(self._warm_target)
            except Exception as err:  # noqa: BLE001 - a stitch that cannot load stays unloaded
                with self._lock:
                    self.notes.append(f"loading a neighbour failed: {err}")

    def _loaded(self, i: int) -> bool:
        return self._levels[i].id in self.bundle.loaded

    # -- running ---------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        """The id of the stitch the next call runs."""
        return self._levels[self._pos].id

    @property
    def front(self) -> list[int]:
        """The governed stitch ids, fastest first."""
        return [lv.id for lv in self._levels]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of ``x`` from the active stitch; the call's latency steers the next choice."""
        return self.infer(x).logits

    def infer(self, x: np.ndarray) -> Call:
        """Like :meth:`run`, with which stitch ran, how long it took and whether it missed."""
        with self._lock:
            pos = self._pos
            cold = self._pending_switch_in
            self._pending_switch_in = False
        lv = self._levels[pos]
        t0 = self.clock()
        logits = self.bundle.run(x, stitch_id=lv.id)
        t1 = self.clock()
        latency = (t1 - t0) * 1e3
        missed = latency > self.deadline_ms
        rewarm = None
        with self._lock:
            self.calls += 1
            self.misses += missed
            lv.calls += 1
            lv.misses += missed
            lv.busy_ms += latency
            if cold:
                self.switch_in_calls += 1
                self.switch_in_misses += missed
            elif pos == self._pos:  # a call that started before a switch says nothing about the new stitch
                self._window.append(latency)
                self._since_switch += 1
                rewarm = self._decide(t1)
            if self._trace.maxlen:
                self._trace.append({"t": t1, "stitch": lv.id, "latency_ms": latency, "missed": missed,
                                    "switch_in": cold})
        if rewarm is not None:
            self._rewarm(rewarm)
        return Call(logits, lv.id, latency, missed, cold, t1)

    def _q(self) -> float:
        values = sorted(self._window)
        return values[max(0, math.ceil(self.quantile * len(values)) - 1)]

    def _moved(self, values, i: int) -> list[float]:
        """The active stitch's latencies scaled to level ``i`` by the reference ratio."""
        r = self._levels[i].ref_ms / self._levels[self._pos].ref_ms
        return [v * r for v in values]

    def _predict(self, q: float, i: int) -> tuple[float, float]:
        """Steady quantile and first-call latency of level ``i`` from the active level's quantile."""
        scale = q / self._levels[self._pos].ref_ms
        lv = self._levels[i]
        return scale * lv.ref_ms, scale * lv.ref_ms * lv.switch_in_ratio

    def _futile(self, q: float) -> bool:
        """Whether stepping down, even to the fastest stitch, would not cut the misses.

        The ratio model reads every slow call as a slower machine. Interruptions (another
        process's time slice, an interrupt storm) add the same delay whatever the stitch: with
        the window's median as the machine's pace, moving to the fastest stitch takes only the
        difference in compute off each call. If that leaves the quantile over the threshold, as
        many recent calls still missing, and the tail barely shorter, stepping down loses
        accuracy for nothing.
        """
        values = sorted(self._window)
        cur, fastest = self._levels[self._pos].ref_ms, self._levels[0].ref_ms
        cut = (cur - fastest) * values[len(values) // 2] / cur
        here = sum(v > self.deadline_ms for v in values)
        there = sum(v - cut > self.deadline_ms for v in values)
        return q - cut > self.down_at * self.deadline_ms and there >= here and q - cut > 0.75 * q

    def _decide(self, now: float) -> int | None:
        """Called under the lock after each steady call; returns the new position after a switch."""
        if len(self._window) < 2:
            return None
        q = self._q()
        self._quantile_ms = q
        d = self.deadline_ms
        if q > self.down_at * d and self._pos > 0:
            if self._futile(q):
                return None
            target = None
            for i in range(self._pos - 1, -1, -1):
                if not self._loaded(i):
                    continue
                steady, first = self._predict(q, i)
                if steady <= self.down_at * d and first <= self.down_at * d:
                    target = i
                    break
            if target is None:
                lower = [i for i in range(self._pos) if self._loaded(i)]
                target = lower[0] if lower else None  # best effort: the fastest loaded
            if target is not None:
                if self._last_up is not None and self.calls - self._last_up[0] <= 2 * self.window:
                    self.flaps += 1
                    self._backoff = min(self._backoff * 2, 64)
                self._last_up = None
                return self._switch(target, "down", q, now)
            return None
        if self._last_up is not None and self.calls - self._last_up[0] > 2 * self.window:
            self._backoff = max(1, self._backoff // 2)  # that step up held: trust step-ups again
            self._last_up = None
        if self._pos + 1 >= len(self._levels) or self._since_switch < self.hold * self._backoff \
                or len(self._window) < self.window:
            return None
        target = None
        for i in range(self._pos + 1, len(self._levels)):  # as far up as the headroom says fits
            if not self._loaded(i):
                break
            steady, first = self._predict(q, i)
            if steady > self.up_at * d or first > self.down_at * d:
                break
            target = i
        if target is None:
            return None
        self._last_up = (self.calls, self._pos)
        return self._switch(target, "up", q, now)

    def _switch(self, target: int, reason: str, q: float, now: float) -> int:
        old = self._levels[self._pos]
        # The new stitch inherits the old one's recent history, scaled by the latency ratio:
        # the slow calls that caused a step down keep it from stepping straight back up.
        self._window = deque(self._moved(self._window, target), maxlen=self.window)
        self._pos = target
        self._since_switch = 0
        self._pending_switch_in = True
        self.switches += 1
        if reason == "down":
            self.switches_down += 1
        else:
            self.switches_up += 1
        self._events.append({"t": now, "from": old.id, "to": self._levels[target].id, "reason": reason,
                             "quantile_ms": q, "call": self.calls})
        self.bundle.activate(self._levels[target].id)  # loaded: a pointer swap
        return target

    def _rewarm(self, pos: int) -> None:
        if self.warm is None:
            return
        if self.background:
            self._warm_target = pos
            self._warm_event.set()
        else:
            self._set_warm(pos)

    # -- reporting -------------------------------------------------------------------------------
    def trace(self) -> list[dict]:
        """The last calls kept (``trace=N``): time, stitch, latency, missed, switch-in."""
        with self._lock:
            return list(self._trace)

    def events(self) -> list[dict]:
        """Every switch: time, from, to, reason ("up"/"down"), the quantile that decided it."""
        with self._lock:
            return list(self._events)

    def stats(self) -> dict:
        """Calls, deadline misses, switches and time per stitch, as a JSON-able dict."""
        temperature = max_temperature_c()
        with self._lock:
            per = {lv.id: {"route": lv.route, "calls": lv.calls, "misses": lv.misses,
                           "busy_ms": lv.busy_ms, "mean_ms": lv.busy_ms / lv.calls if lv.calls else None,
                           "reference_ms": lv.ref_ms, "accuracy": lv.accuracy,
                           "switch_in_ratio": lv.switch_in_ratio, "switch_in_source": lv.switch_in_source}
                   for lv in self._levels}
            acc_calls = [(lv.calls, lv.accuracy) for lv in self._levels if lv.calls and lv.accuracy is not None]
            n_acc = sum(c for c, _ in acc_calls)
            out = {
                "deadline_ms": self.deadline_ms, "quantile": self.quantile, "calls": self.calls,
                "misses": self.misses, "miss_rate": self.misses / self.calls if self.calls else 0.0,
                "switches": self.switches, "switches_up": self.switches_up,
                "switches_down": self.switches_down, "flaps": self.flaps,
                "switch_in_calls": self.switch_in_calls, "switch_in_misses": self.switch_in_misses,
                "active": self.active, "quantile_ms": self._quantile_ms, "front": self.front,
                "loaded": self.bundle.loaded, "per_stitch": per,
                # validated accuracy of the stitches that ran, weighted by their calls
                "mean_accuracy": sum(c * a for c, a in acc_calls) / n_acc if n_acc else None,
                "accuracy_source": self._levels[-1].accuracy_source,
                "environment": {"power_mode": self.power_mode, "max_temperature_c": temperature},
                "notes": list(self.notes),
            }
        return out

    def close(self) -> None:
        self._closed = True
        self._warm_event.set()
        if self._warmer is not None:
            self._warmer.join(timeout=5)

    def __enter__(self) -> "Governor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary_lines(stats: dict) -> list[str]:
    """What the example app prints after a governed stream."""
    lines = [f"governor: {stats['calls']} calls under a {stats['deadline_ms']:g} ms deadline: "
             f"{stats['misses']} missed ({100 * stats['miss_rate']:.1f}%), {stats['switches']} switches "
             f"({stats['switches_down']} down, {stats['switches_up']} up; {stats['switch_in_misses']} of "
             f"{stats['switch_in_calls']} first calls after a switch missed)"]
    for sid, p in stats["per_stitch"].items():
        if p["calls"]:
            acc = "-" if p["accuracy"] is None else f"{p['accuracy']:.4f}"
            lines.append(f"  stitch {sid} {p['route']}: {p['calls']} calls, {p['misses']} missed, mean "
                         f"{p['mean_ms']:.3f} ms, validated accuracy {acc}")
    acc = stats["mean_accuracy"]
    lines.append("validated accuracy of the stitches used (weighted by calls): "
                 + ("unknown (the bundle records none)" if acc is None
                    else f"{acc:.4f} ({stats['accuracy_source'] or 'source unknown'})"))
    lines.extend(f"note: {n}" for n in stats["notes"])
    return lines
