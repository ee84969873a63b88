"""esta.toml: `esta-export init` writes it, `esta-export --target T` runs from it, the command line
wins, and a malformed file is one line naming the key (exit status 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esta_export.errors import InputError
from esta_export.project import load_project, write_template

ROOT = Path(__file__).resolve().parents[1]


def _cli(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "esta_export", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _dry(cwd, *args) -> dict:
    r = _cli(["--dry-run", *args], cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_init_writes_a_commented_file_that_reads_back(tmp_path):
    r = _cli(["init"], tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "esta.toml").read_text()
    assert text.count("#") > 20 and "[device]" in text and "[targets.jetson-orin]" in text
    proj = load_project(tmp_path / "esta.toml")
    assert proj.top == {"target": "cpu"}  # everything else is commented out
    again = _cli(["init"], tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    r = _cli(["init", "model.safetensors", "--target", "jetson-orin", "--force"], tmp_path)
    assert r.returncode == 0
    assert load_project(tmp_path / "esta.toml").top == {"supernet": str(tmp_path / "model.safetensors"),
                                                        "target": "jetson-orin"}


def test_values_resolve_file_then_target_table_then_command_line(tmp_path):
    (tmp_path / "esta.toml").write_text("""
supernet = "models/family.safetensors"
target = "jetson-orin"
out = "out/fam"
val_data = "data/val.npz"
latency_budget_ms = 20
stitches = [0, 1, 5]
[device]
address = "nvidia@orin.local:2222"
identity = "keys/orin"
[targets.cpu]
latency_budget_ms = 3.5
[targets.cpu.device]
address = "root@10.0.0.7"
python = "/opt/venv/bin/python"
""")
    cfg = _dry(tmp_path)
    assert cfg["supernet"] == str(tmp_path / "models/family.safetensors")
    assert cfg["target"] == "jetson-orin" and cfg["out"] == str(tmp_path / "out/fam")
    assert cfg["val_data"] == str(tmp_path / "data/val.npz") and cfg["stitches"] == "0,1,5"
    assert cfg["device"] == "nvidia@orin.local:2222" and cfg["identity"] == str(tmp_path / "keys/orin")
    assert cfg["latency_budget_ms"] == 20 and cfg["stability"] == "robust_cv"
    cfg = _dry(tmp_path, "--target", "cpu")  # the [targets.cpu] table applies
    assert cfg["target"] == "cpu" and cfg["latency_budget_ms"] == 3.5
    assert cfg["device"] == "root@10.0.0.7" and cfg["device_python"] == "/opt/venv/bin/python"
    cfg = _dry(tmp_path, "--target", "cpu", "--latency-budget-ms", "9", "--out", "elsewhere",
               "--device", "me@board", "--stitches", "all", "other.safetensors")
    assert (cfg["latency_budget_ms"], cfg["out"], cfg["device"], cfg["stitches"], cfg["supernet"]) == \
           (9.0, "elsewhere", "me@board", "all", "other.safetensors")


@pytest.mark.parametrize("body, key", [
    ('latency_budget_ms = "fast"', "latency_budget_ms"),
    ("runs = 2.5", "runs"),
    ("runs = -3", "runs"),
    ("archive = 1", "archive"),
    ("colour = 'blue'", "colour"),
    ("[device]\nadress = 'a@b'", "device.adress"),
    ("[device]\nidentity = 'k'", "device.address"),
    ("device = 5", "device"),
    ("[targets.cpu]\nsupernet = 'x'", "targets.cpu.supernet"),
    ("[targets.cpu]\nmax_stitches = true", "targets.cpu.max_stitches"),
    ("targets = 3", "targets"),
    ('supernet = ""', "supernet"),
])
def test_malformed_file_names_the_key(tmp_path, body, key):
    (tmp_path / "esta.toml").write_text(body + "\n")
    with pytest.raises(InputError, match=f"key '{key}'"):
        load_project(tmp_path / "esta.toml")


def test_malformed_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "esta.toml").write_text("supernet = 'a.safetensors'\nmin_accuracy = 'high'\n")
    r = _cli(["--target", "cpu"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "key 'min_accuracy'" in lines[0] and "esta.toml" in lines[0]
    (tmp_path / "esta.toml").write_text("supernet = 'a.safetensors'\nruns = = 3\n")
    r = _cli(["--target", "cpu"], tmp_path)
    assert r.returncode == 2 and "not valid TOML" in r.stderr and "line 2" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_no_supernet_anywhere_says_how(tmp_path):
    r = _cli(["--target", "cpu"], tmp_path)
    assert r.returncode == 2 and "no supernet given" in r.stderr and "esta-export init" in r.stderr


def test_template_is_valid_for_any_supernet_name(tmp_path):
    path = write_template(tmp_path / "esta.toml", 'we"ird \\ name.safetensors', "cpu")
    assert load_project(path).top["supernet"].endswith('we"ird \\ name.safetensors')


def test_literal_command_runs_the_whole_job_from_esta_toml(tmp_path):
    from conftest import perturbed, tiny_anchors
    from esta_export.supernet import Supernet, SupernetSpec
    from esta_export.supernet.formats import save_supernet

    model = perturbed(Supernet(SupernetSpec(tiny_anchors(depths=(2, 2), widths=(16, 32)), "snnet_v1")))
    save_supernet(model, tmp_path / "tiny.safetensors")
    assert _cli(["init", "tiny.safetensors"], tmp_path).returncode == 0
    with open(tmp_path / "esta.toml", "a") as f:
        f.write('out = "job"\nstitches = "0,1,2"\nruns = 3\nseconds = 0.05\n')
    r = _cli(["--target", "cpu", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    job = tmp_path / "job"
    assert (job / "bundle" / "cpu" / "manifest.json").is_file() and (job / "report" / "report.html").is_file()
    assert json.loads((job / "run.json").read_text())["supernet"] == str(tmp_path / "tiny.safetensors")
    manifest = json.loads((job / "bundle" / "cpu" / "manifest.json").read_text())
    assert {s["id"] for s in manifest["stitches"]} <= {0, 1, 2}
