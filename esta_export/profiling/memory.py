"""Peak memory per stitch: resident-set growth while loading and running it.

Method (recorded in every profile record as ``memory_method``): one spawned worker process loads
the stitches one after another. Before each stitch it releases freed heap back to the OS
(``malloc_trim``), reads the baseline ``VmRSS``, resets the peak (``/proc/self/clear_refs`` with
``5``, Linux >= 4.0), loads the runner and runs it a few times, then reads ``VmHWM``. The stitch's
figure is ``VmHWM - baseline``: the memory an application pays to hold and run that stitch. Where
the peak cannot be reset, each stitch gets a fresh spawned process instead (slower, same meaning).
Measuring in a separate process keeps the timing process undisturbed and the figures independent
of which stitch ran before.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
from typing import Any, Callable, Hashable, Sequence

import numpy as np

METHOD = ("VmHWM - VmRSS baseline in a spawned worker (runtime primed by one discarded load): "
          "malloc_trim, clear_refs=5, load the runner, {runs} inference(s)")
# A loader is a picklable top-level callable plus its arguments; it returns a runner.
Job = tuple[Callable[..., Any], tuple]


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_one(loader: Callable[..., Any], args: tuple, shape: Sequence[int], runs: int,
                 reset: bool) -> dict[str, Any]:
    _trim()
    base = _status_kb("VmRSS")
    if reset and not _reset_peak():
        return {"error": "cannot reset the peak RSS here"}
    runner = loader(*args)
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    for _ in range(max(1, runs)):
        runner.infer(x)
    peak = _status_kb("VmHWM")
    del runner
    _trim()
    if base is None or peak is None:
        return {"error": "/proc/self/status is not readable here"}
    return {"peak_rss_mb": max(0.0, (peak - base) / 1024.0), "process_peak_rss_mb": peak / 1024.0,
            "baseline_rss_mb": base / 1024.0}


def _worker(jobs: list[tuple[Hashable, Job]], shape: Sequence[int], runs: int, reset: bool,
            conn: Any) -> None:
    out = {}
    # Prime: the first load imports the runtime and sets up its thread pools; that one-off cost
    # belongs to no stitch, so it happens before any baseline is taken.
    try:
        _measure_one(*jobs[0][1], shape, 1, False)
    except Exception:  # noqa: BLE001 - the real attempt below reports the error
        pass
    for sid, (loader, args) in jobs:
        try:
            out[sid] = _measure_one(loader, args, shape, runs, reset)
        except Exception as err:  # noqa: BLE001 - reported per stitch, never crashes profiling
            out[sid] = {"error": f"{type(err).__name__}: {err}"}
    conn.send(out)
    conn.close()


def _spawn(jobs: list[tuple[Hashable, Job]], shape: Sequence[int], runs: int, reset: bool,
           timeout: float) -> dict[Hashable, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(jobs, shape, runs, reset, child), daemon=True)
    proc.start()
    child.close()
    result: dict[Hashable, dict[str, Any]] = {}
    if parent.poll(timeout):
        try:
            result = parent.recv()
        except EOFError:
            pass
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
    for sid, _ in jobs:
        result.setdefault(sid, {"error": f"memory worker died (exit code {proc.exitcode})"})
    return result


def can_reset_peak() -> bool:
    return _reset_peak()


def measure_peak_memory(jobs: dict[Hashable, Job], input_shape: Sequence[int], *, runs: int = 2,
                        timeout: float = 600.0) -> dict[Hashable, dict[str, Any]]:
    """Peak RSS growth per stitch id: {"peak_rss_mb", "process_peak_rss_mb", "method"} or
    {"error", "method"}. ``jobs`` maps an id to (picklable loader, args)."""
    if not jobs:
        return {}
    items = list(jobs.items())
    if can_reset_peak():
        res = _spawn(items, input_shape, runs, True, timeout)
        method = METHOD.format(runs=runs)
    else:
        res = {}
        for item in items:
            res.update(_spawn([item], input_shape, runs, False, timeout))
        method = ("VmHWM - VmRSS baseline in a fresh spawned process per stitch, "
                  f"{runs} inference(s)")
    for rec in res.values():
        rec["method"] = method
    return res
