"""Environment fingerprint: where a number was measured, and on a Jetson, in which power state.

Every profile record carries this dict. The machine facts, ``env_hash`` and the hardware-truth
check live in ``esta_export.runtime.environment`` (the on-device profiler uses the same code);
this module adds the runtimes importable on the host and tegrastats sampling.

tegrastats output drifts between JetPack releases (AGX rails ``VDD_GPU_SOC``/``VIN_SYS_5V0``,
NX/Nano ``VDD_IN``; ``mW`` suffix or not), so :func:`parse_tegrastats_line` parses tokens by field
name and keeps whatever it does not know under ``other``.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import threading
import time
from typing import Any, Iterable

from ..runtime.environment import (_STABLE_JETSON_KEYS, _STABLE_KEYS, board,  # noqa: F401
                                   cpu_model, env_hash, hardware_match, jetson_info,
                                   parse_jetson_clocks, parse_nvpmodel, processor)
from ..runtime.environment import fingerprint as _machine_fingerprint

# Module input power rails, in order of preference: the whole module's input, not one domain.
INPUT_RAILS = ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN", "VIN")


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes importable here (a missing one is simply absent): every backend
    of the table (runtime/backends.py), so a new backend's version keys the profile cache too."""
    from ..runtime.backends import runtime_versions as versions
    return versions()


# ---------------------------------------------------------------- Jetson


_RAIL = re.compile(r"^(\d+)(?:mW)?/(\d+)(?:mW)?$")
_TEMP = re.compile(r"^([A-Za-z][\w.-]*)@(-?\d+(?:\.\d+)?)C$")
_TIMESTAMP = re.compile(r"^\d{2}-\d{2}-\d{4}$|^\d{2}:\d{2}:\d{2}$")


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """One tegrastats line -> {"ram_mb", "ram_total_mb", "cpu": [...], "freqs", "temps_c",
    "rails_mw": {NAME: {"cur", "avg"}}, "other": {...}}. Unknown tokens go to ``other``."""
    toks = line.split()
    out: dict[str, Any] = {"cpu": [], "freqs": {}, "temps_c": {}, "rails_mw": {}, "other": {}}
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if _TIMESTAMP.match(t):
            i += 1
            continue
        if t in ("RAM", "SWAP", "IRAM") and nxt and re.match(r"^\d+/\d+[kM]B$", nxt):
            used, total = re.findall(r"\d+", nxt)[:2]
            key = t.lower()
            out[f"{key}_mb"], out[f"{key}_total_mb"] = int(used), int(total)
            i += 2
            if i < len(toks) and toks[i].startswith("("):  # (lfb 5807x4MB) / (cached 0MB)
                while i < len(toks) and not toks[i].endswith(")"):
                    i += 1
                i += 1
            continue
        if t == "CPU" and nxt and nxt.startswith("["):
            for core in nxt.strip("[]").split(","):
                m = re.match(r"^(\d+)%@(\d+)$", core)
                out["cpu"].append({"load": int(m.group(1)), "mhz": int(m.group(2))} if m else
                                  {"state": core})
            i += 2
            continue
        if nxt is not None and _RAIL.match(nxt) and re.match(r"^[A-Z][A-Z0-9_]+$", t):
            cur, avg = _RAIL.match(nxt).groups()
            out["rails_mw"][t] = {"cur": int(cur), "avg": int(avg)}
            i += 2
            continue
        m = _TEMP.match(t)
        if m:
            out["temps_c"][m.group(1)] = float(m.group(2))
            i += 1
            continue
        if t.endswith("_FREQ") or t in ("EMC", "GR3D", "VIC", "APE", "NVDLA0", "NVDLA1", "NVENC",
                                        "NVDEC", "NVJPG", "NVJPG1", "OFA", "PVA0_FREQ"):
            if nxt in ("off", "OFF"):
                out["freqs"][t] = {"state": "off"}
                i += 2
                continue
            if nxt is not None and not re.match(r"^[A-Z]", nxt):
                out["freqs"][t] = _parse_freq(nxt)
                i += 2
                continue
        out["other"][t] = nxt if nxt is not None and not re.match(r"^[A-Za-z]", nxt) else True
        i += 2 if out["other"][t] is not True else 1
    return out


def _parse_freq(tok: str) -> dict[str, Any]:
    """``0%@2133`` / ``0%@[305,305]`` / ``@2133`` / ``729`` -> {"load", "mhz"}."""
    m = re.match(r"^(?:(\d+)%)?(?:@\[?([\d,]+)\]?)?$", tok)
    if not m or (m.group(1) is None and m.group(2) is None):
        return {"mhz": int(tok)} if tok.isdigit() else {"raw": tok}
    rec: dict[str, Any] = {}
    if m.group(1) is not None:
        rec["load"] = int(m.group(1))
    if m.group(2):
        mhz = [int(v) for v in m.group(2).split(",") if v]
        rec["mhz"] = mhz[0] if len(mhz) == 1 else mhz
    return rec


def input_power_mw(sample: dict[str, Any]) -> tuple[str, int] | None:
    """The module input rail of one parsed sample (name, instantaneous mW), if the board has one."""
    rails = sample.get("rails_mw", {})
    for name in INPUT_RAILS:
        if name in rails:
            return name, rails[name]["cur"]
    return None


def energy_per_inference_mj(samples: list[tuple[float, dict[str, Any]]], t0: float, t1: float,
                            runs: int) -> dict[str, Any] | None:
    """Integrate module input power over [t0, t1] (trapezoids on the samples) / runs, in mJ.

    ``samples`` are (monotonic time in s, parsed line). Needs two samples inside the window; the
    power before the first and after the last sample is held constant (tegrastats' resolution).
    """
    pts = [(t, p) for t, s in samples if (p := input_power_mw(s)) is not None]
    if runs <= 0 or t1 <= t0 or len(pts) < 2:
        return None
    rail = pts[0][1][0]
    series = [(t, p[1]) for t, p in pts if p[0] == rail]
    inside = [(t, w) for t, w in series if t0 <= t <= t1]
    if len(inside) < 2:
        return None
    before = [(t, w) for t, w in series if t < t0]
    after = [(t, w) for t, w in series if t > t1]
    pts_w = [(t0, (before[-1] if before else inside[0])[1]), *inside,
             (t1, (after[0] if after else inside[-1])[1])]
    joules_mw = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts_w, pts_w[1:]))
    return {"rail": rail, "mj_per_inference": joules_mw / runs, "window_s": t1 - t0,
            "samples": len(inside), "mean_mw": joules_mw / (t1 - t0)}


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background while timing; no-op off a Jetson."""

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats") -> None:
        self.interval_ms = interval_ms
        self.command = command
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self.raw: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which(self.command) is not None

    def __enter__(self) -> "TegrastatsSampler":
        if self.available:
            self._proc = subprocess.Popen([self.command, "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True)
            self._thread = threading.Thread(target=self._pump, daemon=True)
            self._thread.start()
        return self

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.raw.append(line.rstrip("\n"))
            self.samples.append((time.monotonic(), parse_tegrastats_line(line)))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        """Max temperatures, mean rails and clocks seen during the window (for provenance)."""
        if not self.samples:
            return {}
        temps: dict[str, float] = {}
        rails: dict[str, list[int]] = {}
        for _, s in self.samples:
            for k, v in s["temps_c"].items():
                temps[k] = max(temps.get(k, v), v)
            for k, v in s["rails_mw"].items():
                rails.setdefault(k, []).append(v["cur"])
        last = self.samples[-1][1]
        return {"samples": len(self.samples), "max_temps_c": temps,
                "mean_rails_mw": {k: sum(v) / len(v) for k, v in rails.items()},
                "freqs_last": last.get("freqs", {}), "ram_mb_last": last.get("ram_mb")}


def fingerprint(threads: int | None = None, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine facts (runtime/environment.py, the same on the device) plus the runtimes
    importable here."""
    return _machine_fingerprint(threads, runtimes=runtime_versions(), extra=extra)


def describe(env: dict[str, Any]) -> Iterable[str]:
    """Human lines for the report."""
    yield f"{env.get('cpu_model')} ({env.get('cpu_cores')} cores, governor {env.get('governor') or 'n/a'})"
    yield f"{env.get('os')}, kernel {env.get('kernel')}, python {env.get('python')}"
    yield ", ".join(f"{k} {v}" for k, v in (env.get("runtimes") or {}).items())
    j = env.get("jetson")
    if j:
        nv = j.get("nvpmodel") or {}
        jc = j.get("jetson_clocks") or {}
        yield (f"Jetson {j.get('sku')} L4T {j.get('l4t')}, nvpmodel {nv.get('name')} "
               f"(id {nv.get('id')}), jetson_clocks {'pinned' if jc.get('pinned') else 'not pinned'}")
