"""runtime/cpu.py: the CPU feature probe the int8 settings and the bundle runtime rely on."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from esta_export.runtime.cpu import ENV_VAR, KNOWN_FLAGS, cpu_features, missing_flags

X86_INFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8 avx512_bf16

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu
"""
AMD_INFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM_INFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""


def _write(tmp_path, text):
    p = tmp_path / "cpuinfo"
    p.write_text(text)
    return str(p)


def test_real_machine_has_the_contract_keys():
    f = cpu_features()
    assert set(f) >= {"arch", "vendor", "model", "flags", "int8_dot"}
    assert f["flags"] == sorted(f["flags"]) and set(f["flags"]) <= KNOWN_FLAGS
    assert isinstance(f["int8_dot"], bool)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 cpuinfo")
def test_x86_cpuinfo(tmp_path):
    f = cpu_features(cpuinfo=_write(tmp_path, X86_INFO), environ={})
    assert f["vendor"] == "GenuineIntel" and "Xeon" in f["model"]
    # only the first processor block, only the flags that matter
    assert f["flags"] == ["amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512_vnni", "avx512f"]
    assert f["int8_dot"] is True
    f = cpu_features(cpuinfo=_write(tmp_path, AMD_INFO), environ={})
    assert f["vendor"] == "AuthenticAMD" and f["flags"] == ["avx2"] and f["int8_dot"] is False


def test_arm_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    f = cpu_features(cpuinfo=_write(tmp_path, ARM_INFO), environ={})
    assert f["arch"] == "aarch64" and f["vendor"] == "0x41"
    assert f["flags"] == ["asimddp"] and f["int8_dot"] is True


def test_missing_cpuinfo_is_conservative(tmp_path):
    f = cpu_features(cpuinfo=str(tmp_path / "absent"), environ={})
    assert f["flags"] == [] and f["int8_dot"] is False and f["source"] == "unknown"


def test_env_override_replaces_flags(tmp_path, monkeypatch):
    path = _write(tmp_path, X86_INFO)
    f = cpu_features(cpuinfo=path, environ={ENV_VAR: "avx2, AVX512F,bogus"})
    assert f["flags"] == ["avx2", "avx512f"] and f["int8_dot"] is False and f["source"] == ENV_VAR
    assert cpu_features(cpuinfo=path, environ={ENV_VAR: ""})["flags"] == []
    monkeypatch.setenv(ENV_VAR, "avx2,avx512_vnni")
    assert cpu_features()["int8_dot"] is True
    assert missing_flags(["avx512_vnni", "amx_int8"]) == ["amx_int8"]


def test_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import esta_export.runtime.cpu as c; print(c.cpu_features()['arch'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip()
