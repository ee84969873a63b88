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


# ---- int8 and the instruction sets it depends on ------------------------------------------------
# u8 activations x s8 weights: without an int8 dot-product instruction, x86 kernels (ONNX Runtime's
# MLAS, oneDNN in OpenVINO) multiply with AVX2/AVX-512 vpmaddubsw, which adds each pair of products
# into int16 and saturates (2 x 255 x 127 = 64770 > 32767). Weights quantized to 7 bits (ORT
# reduce_range, NNCF's overflow fix on every layer) keep each pair sum within int16 (2 x 255 x 64 =
# 32640), so the result is exact on every CPU; full-range weights are exact only where dot products
# accumulate in int32 (VNNI, AVX-VNNI, AMX, the ARM dot-product extension).
EXACT_EVERYWHERE = "7-bit weights: exact on any CPU (u8 x s7 pair sums fit int16)"
NEEDS_INT8_DOT = "full-range weights: exact only on a CPU with int8 dot products"


def isa_summary(features: dict) -> dict:
    """The part of :func:`cpu_features` an artifact records about the machine it was made on."""
    return {k: features.get(k) for k in ("arch", "vendor", "model", "flags", "int8_dot", "source")}


def int8_plan(target_flags, features: dict | None = None) -> dict:
    """Which int8 weight range is exact both here (where it is calibrated and validated) and on
    the target: full range only when this CPU has int8 dot products AND the target file declares
    them (``[device] cpu_flags``); otherwise 7-bit weights, exact on any CPU.

    Returns the record every int8 artifact carries (``int8_isa``); the backend adds its own
    ``setting`` (what it passed to its quantizer).
    """
    host = features or cpu_features()
    declared = None if target_flags is None else sorted(set(target_flags))
    target_dot = declared is not None and bool(INT8_DOT_FLAGS & set(declared))
    full = bool(host["int8_dot"]) and target_dot
    if full:
        why = "this CPU and the target's declared cpu_flags both have int8 dot products"
    elif declared is None:
        why = "the target file does not declare its CPU's flags ([device] cpu_flags)"
    elif not target_dot:
        why = "the target's declared cpu_flags have no int8 dot product"
    else:
        why = "this CPU has no int8 dot product: full-range weights would saturate in validation"
    return {"full_range": full, "exactness": NEEDS_INT8_DOT if full else EXACT_EVERYWHERE,
            "reason": why, "requires_any": sorted(INT8_DOT_FLAGS) if full else [],
            "target_cpu_flags": declared, "calibrated_on": isa_summary(host),
            "validated_on": isa_summary(host)}


def int8_problem(record: dict | None, features: dict | None = None) -> str | None:
    """Why an int8 artifact's validation does not carry over to this CPU, or None when it does.

    ``record`` is the artifact's ``int8_isa`` (None: made before it was recorded, so assumed to
    need int8 dot products, as every full-range artifact does).
    """
    needs = INT8_DOT_FLAGS
    if isinstance(record, dict) and isinstance(record.get("requires_any", []), list):
        needs = {f for f in record.get("requires_any") or () if isinstance(f, str)}
        if len(needs) != len(record.get("requires_any") or ()):
            needs = INT8_DOT_FLAGS  # a malformed record counts as no record
    else:
        record = None
    if not needs:
        return None
    here = features or cpu_features()
    if needs & set(here["flags"]):
        return None
    validated = record.get("validated_on") if record is not None else None
    flags = validated.get("flags") if isinstance(validated, dict) else None
    flags = [f for f in flags if isinstance(f, str)][:16] if isinstance(flags, list) else []
    where = ("an unrecorded CPU" if record is None else
             "a CPU with " + (", ".join(flags) or "no listed flags"))
    return (f"int8 weights validated on {where} need one of {', '.join(sorted(needs))}, which this CPU "
            f"({here.get('model') or here.get('arch')}, flags: {', '.join(here['flags']) or 'none'}) lacks: "
            "its int8 kernels may saturate")
