"""Environment fingerprint and the Jetson parsers (tegrastats by field name, nvpmodel,
jetson_clocks), on sample lines in the formats the boards print."""

from __future__ import annotations

import shutil

import pytest

from esta_export.profiling.environment import (TegrastatsSampler, energy_per_inference_mj,
                                               env_hash, fingerprint, input_power_mw,
                                               parse_jetson_clocks, parse_nvpmodel,
                                               parse_tegrastats_line)

# AGX Orin (JetPack 5/6): rails VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0; a leading timestamp.
AGX = ("08-08-2023 10:23:50 RAM 4307/30593MB (lfb 5807x4MB) SWAP 0/15296MB (cached 0MB) "
       "CPU [1%@729,0%@729,3%@729,0%@729,0%@729,0%@729,0%@729,0%@729,off,off,off,off] "
       "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@43.875C "
       "Tboard@32C SOC2@40.031C Tdiode@33.75C SOC0@40.156C CV1@-256C GPU@-256C tj@43.875C "
       "SOC1@40.125C CV2@-256C VDD_GPU_SOC 2791mW/2791mW VDD_CPU_CV 399mW/399mW "
       "VIN_SYS_5V0 3517mW/3517mW VDDQ_VDD2_1V8AO 302mW/302mW")
# Orin NX / Nano (JetPack 6): VDD_IN is the whole module; engines reported off; a new field.
NX = ("RAM 2247/7620MB (lfb 1057x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,"
      "0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] NVDEC off NVJPG off "
      "NVJPG1 off VIC off OFA off APE 200 cpu@47.5C soc2@46.5C soc0@46.156C gpu@46.312C "
      "tj@47.5C soc1@46.343C FUTURE_FIELD 7 VDD_IN 4847mW/4847mW VDD_CPU_GPU_CV 519mW/519mW "
      "VDD_SOC 1438mW/1438mW")
# Older Jetson (Xavier/Nano, L4T 32): no mW suffix, EMC/GR3D without clocks.
OLD = ("RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] "
       "EMC_FREQ 0% GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C "
       "VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_IN 3140/3208 VDD_SYS_CPU 536/590")


def test_tegrastats_agx_orin() -> None:
    s = parse_tegrastats_line(AGX)
    assert (s["ram_mb"], s["ram_total_mb"], s["swap_mb"]) == (4307, 30593, 0)
    assert len(s["cpu"]) == 12 and s["cpu"][2] == {"load": 3, "mhz": 729}
    assert s["cpu"][-1] == {"state": "off"}
    assert s["freqs"]["EMC_FREQ"] == {"load": 0, "mhz": 2133}
    assert s["freqs"]["GR3D_FREQ"] == {"load": 0, "mhz": [0, 0]}
    assert s["temps_c"]["tj"] == 43.875 and s["temps_c"]["CV0"] == -256.0
    assert s["rails_mw"]["VIN_SYS_5V0"] == {"cur": 3517, "avg": 3517}
    assert input_power_mw(s) == ("VIN_SYS_5V0", 3517)


def test_tegrastats_orin_nx_nano_tolerates_unknown_fields() -> None:
    s = parse_tegrastats_line(NX)
    assert len(s["cpu"]) == 6
    assert s["freqs"]["GR3D_FREQ"] == {"load": 0, "mhz": 305}
    assert s["freqs"]["NVDEC"] == {"state": "off"}
    assert s["temps_c"]["gpu"] == 46.312
    assert set(s["rails_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert s["other"]["FUTURE_FIELD"] == "7"
    assert input_power_mw(s) == ("VDD_IN", 4847)


def test_tegrastats_old_format_without_units() -> None:
    s = parse_tegrastats_line(OLD)
    assert s["rails_mw"]["VDD_IN"] == {"cur": 3140, "avg": 3208}
    assert s["freqs"]["GR3D_FREQ"] == {"load": 0}
    assert s["temps_c"]["PMIC"] == 100.0


def test_energy_integrates_input_power_over_the_window() -> None:
    def line(mw: int) -> dict:
        return parse_tegrastats_line(f"RAM 1/2MB VDD_IN {mw}mW/{mw}mW VDD_SOC 5mW/5mW")

    samples = [(t / 10, line(4000 + 1000 * (t >= 5))) for t in range(0, 11)]
    e = energy_per_inference_mj(samples, 0.0, 1.0, runs=100)
    # trapezoids: 4 W for 0.4 s, a ramp 4->5 W over 0.1 s, 5 W for 0.5 s = 4.55 J -> 45.5 mJ/run
    assert e["rail"] == "VDD_IN" and e["mj_per_inference"] == pytest.approx(45.5)
    assert energy_per_inference_mj(samples[:1], 0.0, 1.0, 100) is None
    assert energy_per_inference_mj(samples, 0.0, 1.0, 0) is None


def test_nvpmodel_and_jetson_clocks_parsers() -> None:
    nv = parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MODE_30W\n2\n")
    assert nv == {"name": "MODE_30W", "id": 2}
    jc = parse_jetson_clocks(
        "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit\n"
        "Online CPUs: 0-7\n"
        "cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1420800 "
        "IdleStates: WFI=1 c7=1\n"
        "GPU MinFreq=306000000 MaxFreq=815000000 CurrentFreq=306000000\n"
        "EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0\n"
        "NV Power Mode: MODE_30W\n")
    assert jc["online_cpus"] == "0-7" and jc["power_mode"] == "MODE_30W"
    assert jc["units"]["GPU"]["MaxFreq"] == 815000000 and jc["pinned"] is False


def test_fingerprint_and_env_hash_ignore_volatile_fields() -> None:
    env = fingerprint(threads=2)
    assert env["cpu_model"] and env["cpu_cores"] >= 1 and env["threads"] == 2
    assert "onnxruntime" in env["runtimes"] and env["python"]
    h = env_hash(env)
    assert env_hash({**env, "hostname": "elsewhere", "time": "now"}) == h
    assert env_hash({**env, "threads": 4}) != h
    assert env_hash({**env, "runtimes": {**env["runtimes"], "onnxruntime": "0.0"}}) != h
    jet = {**env, "jetson": {"sku": "p3701-0005", "nvpmodel": {"id": 0, "name": "MAXN"},
                             "jetson_clocks": {"pinned": True, "units": {}}, "temps": {"tj": 50}}}
    assert env_hash({**jet, "jetson": {**jet["jetson"], "temps": {"tj": 70}}}) == env_hash(jet)
    other_mode = {**jet, "jetson": {**jet["jetson"], "nvpmodel": {"id": 2, "name": "MODE_30W"}}}
    assert env_hash(other_mode) != env_hash(jet)


def test_sampler_is_a_no_op_off_a_jetson() -> None:
    with TegrastatsSampler() as s:
        pass
    assert s.available == (shutil.which("tegrastats") is not None)
    if not s.available:
        assert s.samples == [] and s.summary() == {}


@pytest.mark.jetson
@pytest.mark.skipif(shutil.which("tegrastats") is None, reason="needs a Jetson with tegrastats")
def test_sampler_on_a_jetson() -> None:  # pragma: no cover - runs on the device only
    import time
    with TegrastatsSampler(interval_ms=50) as s:
        time.sleep(0.5)
    assert s.samples and input_power_mw(s.samples[-1][1]) is not None
    assert fingerprint()["jetson"]["nvpmodel"] is not None


def test_hardware_truth_comes_from_the_processor_not_the_target_file() -> None:
    from esta_export.runtime.environment import hardware_match
    from esta_export.targets import load_target

    amd = {"processor": {"arch": "x86_64", "vendor": "AuthenticAMD", "model": "AMD EPYC 7B13",
                         "flags": ["avx2"]}, "machine": "x86_64"}
    intel = {"processor": {"arch": "x86_64", "vendor": "GenuineIntel", "model": "Intel Xeon",
                           "flags": ["avx2", "avx512f", "avx512_vnni"]}, "machine": "x86_64"}
    ov = load_target("intel-cpu")
    hw = hardware_match(ov.device, amd)
    assert not hw["matches"] and hw["stand_in"] and "AuthenticAMD" in hw["reason"]
    assert "AMD EPYC" in hw["ran_on"]
    assert hardware_match(ov.device, intel)["matches"]
    # the generic cpu target runs on either vendor
    assert hardware_match(load_target("cpu").device, amd)["matches"]
    # an ARM board target on an x86 host: a stand-in; on a Pi 5: matches
    pi = load_target("raspberry-pi-5").device
    assert not hardware_match(pi, intel)["matches"]
    on_pi = {"processor": {"arch": "aarch64", "vendor": "0x41", "flags": ["asimddp"]},
             "board": {"model": "Raspberry Pi 5 Model B Rev 1.0",
                       "compatible": ["raspberrypi,5-model-b", "brcm,bcm2712"]}}
    assert hardware_match(pi, on_pi)["matches"]
    # Jetson and GPU classes need evidence of the device, never a CPU fingerprint alone
    assert not hardware_match(load_target("jetson-orin").device, intel)["matches"]
    jet = {**on_pi, "jetson": {"sku": "p3701-0005", "l4t": "36.3"}}
    assert hardware_match(load_target("jetson-orin").device, jet)["matches"]
    assert not hardware_match(load_target("nvidia-gpu").device, intel)["matches"]
