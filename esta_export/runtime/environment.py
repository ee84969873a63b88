"""Where a number was measured: the machine facts every profile record carries, host or device.

One fingerprint for ``esta-export profile`` (host) and the bundle's ``profile_device.py``: the
processor as :func:`esta_runtime.cpu.cpu_features` reads it (vendor, model, the instruction sets
that matter), cores, governor, OS, and on a Jetson the board, L4T, ``nvpmodel`` power mode and
``jetson_clocks`` state. :func:`env_hash` covers only the fields that change what a latency means
(never temperatures, load or the time), so the cache hits when the same machine measures again.
:func:`hardware_match` says whether that machine is of the target's device class: a record for
``intel-cpu`` made on an AMD processor ran on a stand-in CPU and says so.

Standard library only (plus :mod:`.cpu`): this ships in bundles as ``esta_runtime.environment``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .cpu import cpu_features

# Fields that define a measurement environment. Everything else (temperatures, time, RAM in use,
# live clocks, load) is context, not identity.
_STABLE_KEYS = ("cpu_model", "cpu_cores", "governor", "threads", "os", "kernel", "machine",
                "python", "runtimes", "jetson", "processor")
_STABLE_JETSON_KEYS = ("sku", "compatible", "l4t", "nvpmodel", "jetson_clocks")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout or "") + (out.stderr or "") if out.returncode == 0 else None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def processor() -> dict[str, Any]:
    """Vendor, model, architecture and the instruction sets that matter (runtime/cpu.py)."""
    f = cpu_features()
    return {k: f.get(k) for k in ("arch", "vendor", "model", "flags", "int8_dot", "source")}


def board() -> dict[str, Any] | None:
    """The device tree's model and compatible strings (ARM boards, Jetsons); None elsewhere."""
    model = _read("/proc/device-tree/model")
    compat = _read("/proc/device-tree/compatible")
    if not model and not compat:
        return None
    return {"model": (model or "").strip("\x00"),
            "compatible": [c for c in (compat or "").split("\x00") if c]}


# ---------------------------------------------------------------- Jetson


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """``nvpmodel -q`` -> {"name": "MAXN", "id": 0}; tolerant of extra lines (warnings).
    [unchecked on a device: the format is read loosely]"""
    out: dict[str, Any] = {}
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if m:
        out["name"] = m.group(1)
    for line in text.splitlines():
        if line.strip().isdigit():
            out["id"] = int(line.strip())
    return out


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """``jetson_clocks --show`` -> online CPUs, per-unit min/max/current clocks and a pinned flag.

    Clocks are pinned ("jetson_clocks on") when every listed unit runs with MinFreq == MaxFreq.
    """
    out: dict[str, Any] = {"units": {}}
    m = re.search(r"Online CPUs:\s*(\S+)", text)
    if m:
        out["online_cpus"] = m.group(1)
    for line in text.splitlines():
        unit = re.match(r"\s*(cpu\d+|GPU|EMC|DLA\d*\w*|PVA\w*)\b", line)
        if not unit:
            continue
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        rec = {k: int(v) if v.isdigit() else v for k, v in fields.items()
               if k in ("MinFreq", "MaxFreq", "CurrentFreq", "Online", "Governor", "Gonvernor")}
        if rec:
            out["units"][unit.group(1)] = rec
    mins = [u.get("MinFreq") for u in out["units"].values() if "MinFreq" in u]
    maxs = [u.get("MaxFreq") for u in out["units"].values() if "MaxFreq" in u]
    if mins and len(mins) == len(maxs):
        out["pinned"] = all(a == b for a, b in zip(mins, maxs))
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if m:
        out["power_mode"] = m.group(1)
    return out


def power_mode() -> dict[str, Any] | None:
    """Jetson power mode (``nvpmodel -q``), None where there is no nvpmodel."""
    nv = _run(["nvpmodel", "-q"], timeout=10)
    return parse_nvpmodel(nv) if nv else None


def jetson_info() -> dict[str, Any] | None:
    """Board, L4T, power mode and clock state; None off a Jetson."""
    compat = _read("/proc/device-tree/compatible")
    release = _read("/etc/nv_tegra_release")
    if not release and "nvidia" not in (compat or "").lower():
        return None
    compat_list = [c for c in (compat or "").split("\x00") if c]
    sku = next((m.group(0) for c in compat_list if (m := re.search(r"p\d{4}-\d{4}", c))), None)
    info: dict[str, Any] = {"compatible": compat_list, "sku": sku}
    if release:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        info["l4t"] = f"{m.group(1)}.{m.group(2)}" if m else release.splitlines()[0]
    info["nvpmodel"] = power_mode()
    jc = _run(["jetson_clocks", "--show"])
    info["jetson_clocks"] = parse_jetson_clocks(jc) if jc else None
    return info


# ---------------------------------------------------------------- the fingerprint


def _os_release() -> str:
    text = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.M)
    return m.group(1) if m else ""


def fingerprint(threads: int | None = None, *, runtimes: dict[str, str] | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a profile record says about the machine (cheap: no subprocess off a Jetson)."""
    uname = platform.uname()
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "threads": threads,
        "os": f"{uname.system} {_os_release()}".strip(),
        "kernel": uname.release,
        "machine": uname.machine,
        "python": platform.python_version(),
        "runtimes": dict(runtimes or {}),
        "hostname": uname.node,
        "processor": processor(),
        "board": board(),
        "jetson": jetson_info(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if extra:
        env.update(extra)
    return env


def env_hash(env: dict[str, Any]) -> str:
    """Hash of the stable fields only (never temperatures, live clocks, load or time)."""
    stable = {k: env.get(k) for k in _STABLE_KEYS}
    if isinstance(stable.get("processor"), dict):  # where the flags came from is not identity
        stable["processor"] = {k: v for k, v in stable["processor"].items() if k != "source"}
    if stable.get("jetson"):
        j = stable["jetson"]
        stable["jetson"] = {k: j.get(k) for k in _STABLE_JETSON_KEYS}
        jc = stable["jetson"].get("jetson_clocks")
        if isinstance(jc, dict):  # live CurrentFreq is not identity; the clamps are
            stable["jetson"]["jetson_clocks"] = {
                "pinned": jc.get("pinned"), "online_cpus": jc.get("online_cpus"),
                "max": {u: v.get("MaxFreq") for u, v in jc.get("units", {}).items()}}
    blob = json.dumps(stable, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- hardware truth


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def hardware_match(device: Any, env: dict[str, Any]) -> dict[str, Any]:
    """Did the machine of ``env`` belong to the target's device class?

    ``device`` is the target's ``[device]`` (a Target.device or its dict). Returns
    ``{"matches", "ran_on", "reason", "stand_in"}``; ``verified_on_hardware`` of a record is
    ``matches``. CPU classes are checked by architecture, vendor (``cpu_vendor``) and SoC (device
    tree); Jetsons by the board's Jetson identity and module; GPUs and NPUs by the accelerator the
    record says it ran on, since a CPU fingerprint says nothing about them.
    """
    proc = env.get("processor") or {}
    kind = _get(device, "kind") or "cpu"
    ran_on = (f"{proc.get('model') or env.get('cpu_model') or 'unknown CPU'} "
              f"({proc.get('vendor', 'unknown vendor')}, {proc.get('arch') or env.get('machine')}"
              + (f", {' '.join(proc['flags'])}" if proc.get("flags") else "") + ")")
    reasons: list[str] = []
    if kind == "cpu":
        arch = _get(device, "arch") or "any"
        have = proc.get("arch") or env.get("machine")
        if arch != "any" and have != arch:
            reasons.append(f"architecture {have}, the target is {arch}")
        vendor = _get(device, "cpu_vendor")
        if vendor and str(proc.get("vendor", "")).lower() != vendor.lower():
            reasons.append(f"vendor {proc.get('vendor')}, the target is {vendor}")
        soc = _get(device, "soc")
        if soc:
            b = env.get("board") or {}
            text = " ".join([b.get("model", "")] + list(b.get("compatible", []))).lower()
            if soc.lower() not in text:
                reasons.append(f"no {soc} in the device tree")
    elif kind == "jetson":
        j = env.get("jetson")
        module = _get(device, "module")
        if not j:
            reasons.append("not a Jetson (no L4T release, no NVIDIA device tree)")
        elif module and j.get("sku") and j["sku"] != module:
            reasons.append(f"Jetson module {j['sku']}, the target is {module}")
        else:
            ran_on = f"Jetson {j.get('sku') or '?'} (L4T {j.get('l4t') or '?'})"
    else:
        acc = env.get("accelerator")
        if not acc:
            reasons.append(f"no {kind.upper()} recorded as the device that ran")
        else:
            ran_on = str(acc)
    matches = not reasons
    return {"matches": matches, "ran_on": ran_on, "device_class": _get(device, "name"),
            "reason": "; ".join(reasons) if reasons else "matches the target's device class",
            "stand_in": not matches}
