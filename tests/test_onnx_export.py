"""Export stage: every stitch of both spaces to ONNX, validated on ONNX Runtime, weights stored once."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from esta_export.errors import InputError, StitchError
from esta_export.onnx_export import ExportSettings, export_supernet, load_export, parse_stitch_selection
from esta_export.slicing import slice_stitch
from esta_export.supernet import load_supernet, save_supernet


def _export(model, tmp_path, name="s", **kw):
    path = save_supernet(model, tmp_path / f"{name}.safetensors")
    return load_supernet(path), export_supernet(load_supernet(path), tmp_path / f"{name}-out", **kw)


@pytest.mark.parametrize("fixture", ["esta_supernet", "v2_supernet"])
def test_every_stitch_exports_and_validates(request, tmp_path, fixture):
    model = request.getfixturevalue(fixture)
    loaded, result = _export(model, tmp_path)
    s = result.summary
    assert s["failed"] == [] and len(s["stitches"]) == len(model.space)
    for rec in s["stitches"]:
        assert rec["max_abs_error"] <= rec["tolerance"] and rec["slice_max_abs_error"] <= rec["slice_tolerance"]
        assert set(rec) >= {"id", "route", "onnx", "flops", "params", "max_abs_error"}
    # Independent check: run a graph ourselves on a new input against the PyTorch slice.
    rec = s["stitches"][-1]
    sess = ort.InferenceSession(str(result.out_dir / rec["onnx"]), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)                     # another batch size: the batch axis is dynamic
    with torch.no_grad():
        ref = slice_stitch(loaded.model, rec["id"])(x).numpy()
    got = sess.run(["logits"], {"pixels": x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4


def test_weights_are_stored_once(esta_supernet, tmp_path):
    _, result = _export(esta_supernet, tmp_path)
    s = result.summary
    onnx_bytes = sum((result.out_dir / r["onnx"]).stat().st_size for r in s["stitches"])
    assert s["weights_bytes"] <= 1.01 * s["unique_param_bytes"]
    # graphs hold structure only (tens of KB whatever the model size): every weight is in the shared file
    assert onnx_bytes / len(s["stitches"]) < 64_000
    graph = onnx.load(str(result.out_dir / s["stitches"][5]["onnx"]), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"weights.bin"}


def test_opset16_decomposes_layernorm(v2_supernet, tmp_path):
    _, result = _export(v2_supernet, tmp_path, stitches="0,2,12", settings=ExportSettings(opset=16))
    assert result.summary["layernorm"] == "decomposed" and result.summary["failed"] == []
    graph = onnx.load(str(result.out_dir / result.summary["stitches"][1]["onnx"]), load_external_data=False)
    assert "LayerNormalization" not in {n.op_type for n in graph.graph.node}
    assert graph.opset_import[0].version == 16


def test_resume_after_crash_redoes_only_what_was_in_flight(esta_supernet, tmp_path):
    loaded, first = _export(esta_supernet, tmp_path, stitches="0-9")
    out = first.out_dir
    reference = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".onnx", ".bin")}
    # Simulate a kill: summary not yet written, one stitch's record lost, garbage appended to the store.
    (out / "export.json").unlink()
    (out / "stitch_007.json").unlink()
    with open(out / "weights.bin", "ab") as f:
        f.write(b"torn write")
    again = export_supernet(loaded, out, stitches="0-9")
    assert again.reused == 9 and again.exported == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".onnx", ".bin")} == reference
    assert load_export(out)["stitches"] == first.summary["stitches"]


def test_deterministic_bytes(esta_supernet, tmp_path):
    _, a = _export(esta_supernet, tmp_path, "a", stitches="0,4,12")
    _, b = _export(esta_supernet, tmp_path, "b", stitches="0,4,12")
    for name in ("weights.bin", "stitch_004.onnx"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()


def test_stitch_selection_parsing():
    ids = list(range(23))
    assert parse_stitch_selection("all", ids) == ids
    assert parse_stitch_selection("0,3,10-12", ids) == [0, 3, 10, 11, 12]
    for bad in ("99", "3-1", "x", ",", "5-40"):
        with pytest.raises(StitchError):
            parse_stitch_selection(bad, ids)


def test_bad_opset(esta_supernet, tmp_path):
    path = save_supernet(esta_supernet, tmp_path / "s.safetensors")
    with pytest.raises(InputError, match="opset"):
        export_supernet(load_supernet(path), tmp_path / "o", settings=ExportSettings(opset=9))


def test_summary_is_written_last_and_records_provenance(esta_supernet, tmp_path):
    loaded, result = _export(esta_supernet, tmp_path, stitches="0-2")
    s = json.loads((result.out_dir / "export.json").read_text())
    assert s["supernet"]["sha256"] == loaded.sha256 and s["input"]["shape"] == ["batch", 3, 32, 32]
    assert s["opset"] == 17 and s["output"] == {"name": "logits", "num_classes": 10}
