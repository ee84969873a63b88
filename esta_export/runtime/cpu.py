"""What the CPU this runs on can do for int8 (and bf16): read from /proc/cpuinfo, torch-free.

int8 kernels differ by instruction set: ONNX Runtime's uint8 x int8 kernels saturate on x86
without VNNI (AVX2 ``vpmaddubsw`` adds pairs of products into int16), OpenVINO computes in bf16 on
AMX CPUs unless told otherwise. Compilation records what it was validated on; the bundle runtime
compares that with :func:`cpu_features` of the device.

``ESTA_CPU_FLAGS="avx2,avx512f"`` (a comma list, empty for none) replaces the flags read from the
machine, so tests can take the code paths of a CPU they do not run on. Names outside
:data:`KNOWN_FLAGS` are ignored.
"""

from __future__ import annotations

import os
import platform

#: The flags that matter, per architecture (the Linux /proc/cpuinfo spellings).
X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")
ARM_FLAGS = ("asimddp", "i8mm", "sve", "bf16")
KNOWN_FLAGS = frozenset(X86_FLAGS + ARM_FLAGS)
#: Flags giving int8 dot products that accumulate in int32 (no int16 saturation).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
ENV_VAR = "ESTA_CPU_FLAGS"
CPUINFO = "/proc/cpuinfo"

_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "x64": "x86_64",
                 "arm64": "aarch64", "aarch64": "aarch64"}


def _read_cpuinfo(path: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines (later processors repeat them)."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)  # a few KiB per core; never read an unbounded file
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields.get("flags") or fields.get("features"):
                break  # end of the first processor block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _override(value: str) -> list[str]:
    names = {part.strip().lower() for part in value.split(",")}
    return sorted(names & KNOWN_FLAGS)


def cpu_features(*, cpuinfo: str = CPUINFO, environ=None) -> dict:
    """``arch``, ``vendor``, ``model``, ``flags`` (sorted, only :data:`KNOWN_FLAGS`), ``int8_dot``,
    and ``source`` (``"/proc/cpuinfo"``, ``ESTA_CPU_FLAGS`` or ``"unknown"``)."""
    environ = os.environ if environ is None else environ
    machine = platform.machine().lower()
    arch = _ARCH_ALIASES.get(machine, machine or "unknown")
    info = _read_cpuinfo(cpuinfo)
    if arch == "aarch64":
        vendor = info.get("cpu implementer", "")
        model = info.get("model name") or info.get("cpu part", "")
        raw = info.get("features", "")
    else:
        vendor = info.get("vendor_id", "")
        model = info.get("model name", "")
        raw = info.get("flags", "")
    if ENV_VAR in environ:
        flags, source = _override(environ[ENV_VAR]), ENV_VAR
    else:
        flags = sorted(set(raw.lower().split()) & KNOWN_FLAGS)
        source = cpuinfo if info else "unknown"
    return {"arch": arch, "vendor": vendor or "unknown", "model": model or platform.processor() or "",
            "flags": flags, "int8_dot": bool(INT8_DOT_FLAGS & set(flags)), "source": source}


def missing_flags(needed, features: dict | None = None) -> list[str]:
    """The flags of ``needed`` that this CPU (or ``features``) lacks, sorted."""
    have = set((features or cpu_features())["flags"])
    return sorted(set(needed) - have)
