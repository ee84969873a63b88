"""Targets: every TOML loads into typed objects; the schema check names the bad field."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from esta_export.cli import main
from esta_export.errors import TargetError
from esta_export.targets import (BACKENDS, Target, check_graph, list_targets, load_target,
                                 target_names)

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"cpu", "cpu-int8", "intel-cpu", "intel-cpu-int8", "intel-gpu", "intel-npu",
            "nvidia-gpu", "jetson-orin", "jetson-orin-dla", "jetson-orin-nx", "jetson-orin-nano",
            "jetson-orin-jp5", "raspberry-pi-5"}


def test_every_target_loads_and_is_consistent():
    targets = list_targets()
    assert {t.name for t in targets} == EXPECTED == set(target_names())
    for t in targets:
        assert isinstance(t, Target) and t.backend in BACKENDS
        assert Path(t.source).stem == t.name and len(t.file_sha256) == 64
        assert t.precision in t.precisions
        if t.backend == "tensorrt":
            assert t.runtime.tensorrt and not t.verified
        with pytest.raises(AttributeError):  # frozen
            t.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_target_facts(name):
    t = load_target(name)
    if name.startswith("jetson"):
        assert t.device.kind == "jetson" and t.device.compute_capability == "8.7"
        assert t.power_mode is not None and t.power_mode.name
        assert t.runtime.jetpack and t.runtime.l4t and t.runtime.cuda
    if name == "jetson-orin-nano":
        assert t.device.dla_cores == 0 and t.execution.dla_core is None
    if name == "jetson-orin-dla":
        assert t.execution.dla_core == 0 and t.execution.gpu_fallback and t.shapes.static
    if name == "jetson-orin-jp5":
        assert t.runtime.tensorrt.startswith("8.5") and t.max_opset == 16
        assert t.layernorm == "decomposed"
    if name == "intel-npu":
        assert t.shapes.static and t.device.openvino_device == "NPU"
    if name == "raspberry-pi-5":
        assert t.execution.threads == 4 and t.device.arch == "aarch64"
    if name in ("cpu", "cpu-int8", "intel-cpu", "intel-cpu-int8"):
        assert t.verified  # the tests of this project run them on this x86-64 machine
    else:
        assert t.verification == "not verified on hardware"


def _write(tmp_path, text, name="mine.toml"):
    p = tmp_path / name
    p.write_text((ROOT / "targets" / "cpu.toml").read_text() + text)
    return p


def test_user_toml_by_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text((ROOT / "targets" / "cpu.toml").read_text().replace('name = "cpu"', 'name = "mine"'))
    t = load_target(str(p))
    assert t.name == "mine" and t.source == str(p)


@pytest.mark.parametrize("edit, words", [
    (("layernorm = \"op\"", "layernorm = \"fused\""), ["layernorm", "op, decomposed"]),
    (("backend = \"onnxruntime\"", "backend = \"tflite\""), ["backend", "onnxruntime, openvino, tensorrt"]),
    (("max_opset = 21", "max_opset = \"21\""), ["max_opset", "integer"]),
    (("threads = 0", "threads = 0\nthreadz = 3"), ["execution.threadz", "allowed keys"]),
    (("name = \"cpu\"\n", "name = \"cpu\"\ncolour = 1\n"), ["colour", "allowed keys"]),
    (("precision = \"fp32\"\n", ""), ["missing key precision"]),
    (("batch_max = 64", "batch_max = 0"), ["batch_min <= batch_opt <= batch_max"]),
    (("precisions = [\"fp32\", \"int8\"]", "precisions = [\"int8\"]"), ["precision", "precisions"]),
    (("precisions = [\"fp32\", \"int8\"]", "precisions = [\"fp32\", \"int4\"]"), ["precisions", "allowed values"]),
])
def test_schema_errors_name_field_and_allowed(tmp_path, edit, words):
    text = (ROOT / "targets" / "cpu.toml").read_text()
    assert edit[0] in text
    p = tmp_path / "bad.toml"
    p.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(TargetError) as err:
        load_target(p)
    for w in words:
        assert w in str(err.value)


def test_dla_rules(tmp_path):
    text = (ROOT / "targets" / "jetson-orin-dla.toml").read_text()
    p = tmp_path / "d.toml"
    p.write_text(text.replace("static = true", "static = false"))
    with pytest.raises(TargetError, match="static shapes"):
        load_target(p)
    p.write_text(text.replace("dla_core = 0", "dla_core = 2"))
    with pytest.raises(TargetError, match="2 DLA cores"):
        load_target(p)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(TargetError, match="jetson-orin"):
        load_target("jetson-xavier")
    with pytest.raises(TargetError, match="not found"):
        load_target(str(tmp_path / "nope.toml"))
    p = tmp_path / "broken.toml"
    p.write_text("name = ")
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target(p)


def test_check_graph_refuses_opset_and_layernorm():
    jp5 = load_target("jetson-orin-jp5")
    with pytest.raises(TargetError, match="--target jetson-orin-jp5") as err:
        check_graph(jp5, 17, "decomposed")
    assert "--opset 16" in str(err.value)
    with pytest.raises(TargetError, match="LayerNormalization"):
        check_graph(jp5, 16, "op")
    check_graph(jp5, 16, "decomposed")
    check_graph(load_target("jetson-orin"), 17, "op")


def test_resolve_precision():
    t = load_target("intel-cpu")
    assert t.resolve_precision(None) == "fp32" and t.resolve_precision("int8") == "int8"
    with pytest.raises(TargetError, match="fp32, int8, bf16"):
        t.resolve_precision("fp16")


def test_targets_command_json(capsys):
    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == EXPECTED
    for r in rows:
        assert r["backend_installed"] == (importlib.util.find_spec(r["backend"]) is not None)
        if r["backend"] == "tensorrt":
            assert r["where_ran"] == "not verified on hardware" and not r["verified_on_hardware"]


def test_targets_command_says_where_targets_really_ran(tmp_path, capsys):
    """A record for intel-cpu made on an AMD EPYC is a stand-in, whatever the target file says."""
    store = tmp_path / "p.jsonl"
    amd = {"processor": {"arch": "x86_64", "vendor": "AuthenticAMD", "model": "AMD EPYC 7B13",
                         "flags": ["avx2"]}, "machine": "x86_64"}
    intel = {"processor": {"arch": "x86_64", "vendor": "GenuineIntel", "model": "Xeon 8481C",
                           "flags": ["avx2", "avx512f"]}, "machine": "x86_64"}
    store.write_text("\n".join(json.dumps({"target": t, "env": env}) for t, env in
                                (("intel-cpu", amd), ("cpu", amd), ("cpu", intel))) + "\nnot json\n")
    assert main(["targets", "--json", "--profiles", str(store)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    ov = rows["intel-cpu"]
    assert not ov["verified_on_hardware"] and ov["where_ran"].startswith("stand-in only: AMD EPYC")
    assert "GenuineIntel" in ov["where_ran"]
    assert rows["cpu"]["verified_on_hardware"] and "AMD EPYC" in rows["cpu"]["where_ran"]
    assert "Xeon 8481C" in rows["cpu"]["where_ran"] and rows["cpu"]["records"] == 2
    assert not rows["intel-cpu-int8"]["verified_on_hardware"]


def test_targets_command_table_imports_no_runtime():
    code = ("import sys; from esta_export.cli import main; main(['targets']); "
            "heavy = [m for m in ('onnxruntime', 'openvino', 'torch', 'tensorrt', 'onnx', 'nncf') "
            "if m in sys.modules]; print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out
    assert "jetson-orin-dla" in out and "not verified on hardware" in out
