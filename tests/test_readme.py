"""The README's first-screen commands work as written (Polygraphy's rule: every README command runs in
the tests). The main job runs on the shipped demo with a stitch subset and short timing so the suite
stays fast; the flags it adds only narrow the work, they do not change what the command does."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _first_block_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_first_screen_has_the_two_commands():
    cmds = _first_block_commands()
    assert cmds == ["./scripts/demo.sh", "./scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci, "the CI must run the README's test command"
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "python -m pytest" in test_sh and ". scripts/setup.sh" in test_sh
    # The setup pins what CI tested and never pulls the CUDA build of torch from the public index.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "constraints.txt" in setup and "download.pytorch.org/whl/cpu" in setup


def _env(out: Path | None = None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["ESTA_NO_SETUP"] = "1"  # the suite already runs inside the environment setup.sh made
    if out is not None:
        env["ESTA_DEMO_OUT"] = str(out)
    return env


def _demo(out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), *extra], cwd=ROOT, env=_env(out),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_readme_main_job_runs_on_the_demo(tmp_path):
    out = tmp_path / "demo"
    proc = _demo(out, "--stitches", "0,1,2,32,34", "--runs", "5", "--seconds", "0.05", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in ("export/export.json", "compiled/cpu/compile.json", "profiles/cpu.jsonl", "select/cpu.json",
                 "report/report.html", "report/pareto.png", "bundle/cpu/manifest.json", "run.json"):
        assert (out / path).is_file(), path
    sel = json.loads((out / "select/cpu.json").read_text())
    assert sel["accuracy_source"].startswith("val-data") and sel["selected"]
    manifest = json.loads((out / "bundle/cpu/manifest.json").read_text())
    assert {s["id"] for s in manifest["stitches"]} == set(sel["selected"])
    # The bundle's example app runs on its own (the torch-free check lives in test_runtime.py).
    app = subprocess.run([sys.executable, str(out / "bundle/cpu/app.py"), "--runs", "3"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert app.returncode == 0, app.stderr[-2000:]
    assert "top-5" in app.stdout


@pytest.mark.slow
def test_replay_saved_run_config(tmp_path):
    proc = _demo(tmp_path / "o", "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["target"] == "cpu" and cfg["out"] == str(tmp_path / "o")
    (tmp_path / "run.json").write_text(proc.stdout)
    again = subprocess.run([sys.executable, "-m", "esta_export", "--config", str(tmp_path / "run.json"), "--dry-run"],
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout) == cfg
    # --ray (profile on a Ray fleet) is part of the saved configuration
    fleet = _demo(tmp_path / "f", "--ray", "127.0.0.1:6379", "--dry-run", timeout=120)
    assert fleet.returncode == 0 and json.loads(fleet.stdout)["ray"] == "127.0.0.1:6379"
