"""Top-1 of compiled artifacts on validation data, through the real ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from esta_export.backends import get_backend
from esta_export.errors import InputError
from esta_export.evaluate import evaluate_compiled, evaluate_runner, load_val_data
from esta_export.select import select_compiled
from esta_export.profiling.compiled import profile_compiled
from esta_export.targets import load_target
from fixtures.routes import family
from fixtures.compiled import make_compiled


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    return make_compiled(tmp_path_factory.mktemp("out"), family()[:4])


def _val(compiled: Path, path: Path) -> np.ndarray:
    """Labels = stitch 0's own predictions on 40 inputs: stitch 0 scores exactly 1.0."""
    x = np.random.default_rng(3).standard_normal((40, 3, 8, 8)).astype(np.float32)
    runner = get_backend("onnxruntime").load(compiled / "stitch_000/model.onnx", load_target("cpu"))
    y = runner.infer(x).argmax(1)
    np.savez(path, x=x, y=y)
    return y


def test_top1_of_each_compiled_artifact(compiled: Path, tmp_path: Path) -> None:
    y = _val(compiled, tmp_path / "val.npz")
    accs = evaluate_compiled(compiled, "cpu", tmp_path / "val.npz")
    assert set(accs) == {0, 1, 2, 3}
    assert accs[0]["accuracy"] == 1.0 and accs[0]["n"] == 40
    assert "compiled fp32 artifact on cpu" in accs[0]["source"]
    runner = get_backend("onnxruntime").load(compiled / "stitch_002/model.onnx", load_target("cpu"))
    x = np.load(tmp_path / "val.npz")["x"]
    expect = float((runner.infer(x).argmax(1) == y).mean())
    assert accs[2]["accuracy"] == pytest.approx(expect)
    # static batches pad the last batch and ignore the padding
    assert evaluate_runner(runner, x, y, batch=7, static_batch=True) == pytest.approx(expect)


def test_select_uses_val_data_and_says_so(compiled: Path, tmp_path: Path) -> None:
    _val(compiled, tmp_path / "val.npz")
    profile_compiled(compiled, "cpu", min_runs=3, min_seconds=0.0, memory=False)
    res = select_compiled(compiled, "cpu", val_data=tmp_path / "val.npz",
                          out_path=tmp_path / "sel.json")
    assert res["accuracy_source"].startswith("val-data")
    by = {s["id"]: s for s in res["stitches"]}
    assert by[0]["accuracy"] == 1.0 and 0 in res["front"]
    assert all(s["accuracy_source"].startswith("val-data") for s in res["stitches"])


def test_bad_validation_files(tmp_path: Path, compiled: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_val_data(tmp_path / "nope.npz")
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 3, 8, 8)))
    with pytest.raises(InputError, match="not 'x' and 'y'"):
        load_val_data(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3, 8, 8)), y=np.zeros(2, np.float32))
    with pytest.raises(InputError, match="must be integers"):
        load_val_data(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 9, 9)), y=np.zeros(2, np.int64))
    with pytest.raises(InputError, match="images are"):
        load_val_data(tmp_path / "c.npz", ["batch", 3, 8, 8])
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32), y=np.array([0, 10]))
    with pytest.raises(InputError, match="classes"):
        evaluate_compiled(compiled, "cpu", tmp_path / "d.npz")
    (tmp_path / "e.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable"):
        load_val_data(tmp_path / "e.npz")
