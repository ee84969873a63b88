"""The contract of every target whose backend is installed here: the main job on a few demo
stitches ends in a bundle whose app.py runs in a fresh virtual environment holding only numpy and
that target's runtime, with the engine it says, and whose logits equal the compile reference
within the target's gate.

The virtual environments are made once per session with pip (``--python``) from the pinned
constraints (pip's cache makes it local after the first time); the test skips, saying why, only
when pip cannot install them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from esta_export.backends import backend_modules, runtime_importable
from esta_export.targets import load_target
from esta_export.validate import describe_failure, validate

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
STITCHES = "0,1,32"
TARGETS = ["cpu", "cpu-int8", "intel-cpu", "intel-cpu-int8"]
ENGINE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# What a device imports to run a bundle: numpy, the bundle's runtime, nothing of the build side.
FORBIDDEN = ("torch", "onnx", "esta_export", "nncf")

pytestmark = pytest.mark.slow


def _installed(name: str) -> bool:
    t = load_target(name)
    import importlib.util

    return runtime_importable(t.backend) and (t.precision != "int8" or t.backend != "openvino"
                                              or importlib.util.find_spec("nncf") is not None)


@pytest.fixture(scope="session")
def clean_venvs(tmp_path_factory):
    """A venv per runtime package, holding numpy and that package (and what they require) only."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("venvs")

    def get(package: str) -> Path:
        if package not in made:
            d = root / package
            venv.EnvBuilder(with_pip=False, symlinks=True).create(d)
            py = d / "bin" / "python"
            cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                   "--disable-pip-version-check", "numpy", package]
            if (ROOT / "constraints.txt").is_file():
                cmd[7:7] = ["-c", str(ROOT / "constraints.txt")]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                pytest.skip(f"pip could not make a clean venv with numpy and {package}: "
                            f"{proc.stderr.strip().splitlines()[-1:]}")
            made[package] = py
        return made[package]

    return get


def _main_job(target: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "esta_export", str(DEMO / "digits-esta.safetensors"), "--target", target,
           "--out", str(out), "--val-data", str(DEMO / "digits-val.npz"), "--stitches", STITCHES,
           "--runs", "5", "--seconds", "0.05", "-q"]
    if load_target(target).precision == "int8":
        cmd += ["--calibration", str(DEMO / "digits-val.npz")]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


_LOGITS = """
import json, sys, importlib.util
sys.path.insert(0, sys.argv[1])
import numpy as np
from esta_runtime import Bundle
forbidden = [m for m in {forbidden!r} if importlib.util.find_spec(m) is not None]
ref = np.load(sys.argv[2])
b = Bundle.open(sys.argv[1])
out = {{}}
for s in b.stitches():
    out[str(s.id)] = b.run(ref["x"], stitch_id=s.id).tolist()
print(json.dumps({{"engine": b.engine, "forbidden": forbidden, "logits": out,
                  "int8_checks": sorted(b.int8_checks)}}))
"""


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_runs_with_only_its_runtime(target, tmp_path, clean_venvs):
    if not _installed(target):
        pytest.skip(f"the {load_target(target).backend} backend of {target} is not installed here")
    t = load_target(target)
    proc = _main_job(target, tmp_path / "job")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = tmp_path / "job" / "bundle" / target
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["stitches"], "the main job bundled no stitch"
    py = clean_venvs(backend_modules()[t.backend])

    # app.py as a user runs it, from another folder, with the isolated interpreter
    app = subprocess.run([str(py), "-I", str(bundle / "app.py"), "--runs", "3"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert app.returncode == 0, app.stdout + app.stderr
    assert f"running on {ENGINE[t.backend]})" in app.stdout and "top-5" in app.stdout, app.stdout
    # the deadline governor's stream (issue 14), same clean environment
    gov = subprocess.run([str(py), "-I", str(bundle / "app.py"), "--deadline-ms", "1000", "--runs", "50"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert gov.returncode == 0, gov.stdout + gov.stderr
    assert "governor: 50 calls under a 1000 ms deadline" in gov.stdout, gov.stdout

    # the runtime's logits on the compile reference inputs, through the target's gate
    reference = tmp_path / "job" / "compiled" / target / "reference.npz"
    code = _LOGITS.format(forbidden=FORBIDDEN)
    run = subprocess.run([str(py), "-I", "-c", code, str(bundle), str(reference)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert got["engine"] == ENGINE[t.backend] and got["forbidden"] == []
    ref = np.load(reference)
    labels = ref["y"] if "y" in ref.files else None
    for sid, logits in got["logits"].items():
        v = validate(t.precision, np.asarray(logits, np.float32), ref[f"ref_{sid}"], t.validation, labels=labels)
        assert v["passed"], f"{target} stitch {sid}: {describe_failure(v)}"
