"""Native format and SN-Net importers: round trips, detection, and files that must be refused."""

import argparse
import json
import os
import zipfile

import pytest
import torch

from esta_export.errors import EstaError, FormatError, InputError, UnsafeFileError
from esta_export.supernet import Supernet, SupernetSpec, load_supernet, save_supernet
from esta_export.supernet.formats.native import METADATA_KEY

from conftest import perturbed, tiny_anchors

X = torch.randn(2, 3, 32, 32)


def _same_everywhere(a, b):
    with torch.no_grad():
        return max((a(X, i) - b(X, i)).abs().max().item() for i in a.space.ids)


def test_native_round_trip(esta_supernet, tmp_path):
    path = save_supernet(esta_supernet, tmp_path / "s.safetensors")
    loaded = load_supernet(path)
    assert loaded.source_format == "native" and loaded.spec == esta_supernet.spec
    assert _same_everywhere(loaded.model, esta_supernet) == 0.0


def test_snnet_v1_checkpoint_as_training_code_saves_it(v1_supernet, tmp_path):
    ckpt = {"model": v1_supernet.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 49,
            "args": argparse.Namespace(nearest_stitching=True, lr=5e-5, model="deit")}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    loaded = load_supernet(tmp_path / "checkpoint.pth", num_heads=[2, 3, 4])
    assert loaded.source_format == "snnet_v1" and len(loaded.model.space) == 23
    assert loaded.num_heads == [2, 3, 4] and loaded.spec.num_heads_source == "user"
    assert _same_everywhere(loaded.model, v1_supernet) == 0.0
    assert loaded.spec.source["args"]["lr"] == 5e-5
    # round trip through the native format keeps everything
    native = save_supernet(loaded.model, tmp_path / "n.safetensors", loaded.spec)
    assert _same_everywhere(load_supernet(native).model, v1_supernet) == 0.0


def test_snnet_v1_keys_are_the_snnet_layout(v1_supernet):
    keys = set(v1_supernet.state_dict())
    assert "anchors.0.cls_token" in keys and "anchors.2.blocks.3.mlp.fc2.bias" in keys
    assert "stitch_layers.1.2.transform.weight" in keys and "anchors.0.norm.weight" in keys


def test_heads_default_to_deit_convention(tmp_path):
    anchors = tiny_anchors(widths=(64, 128, 192))
    model = perturbed(Supernet(SupernetSpec(anchors, "snnet_v1")))
    torch.save({"model": model.state_dict()}, tmp_path / "c.pth")
    loaded = load_supernet(tmp_path / "c.pth")
    assert loaded.num_heads == [1, 2, 3] and loaded.spec.num_heads_source == "convention"
    assert any("width/64" in n for n in loaded.notes)


def test_snnet_v2_checkpoint_detected_with_lora_rank(v2_supernet, tmp_path):
    torch.save({"model": v2_supernet.state_dict()}, tmp_path / "v2.pth")
    loaded = load_supernet(tmp_path / "v2.pth", num_heads=[2, 4])
    assert loaded.source_format == "snnet_v2" and len(loaded.model.space) == 14
    assert loaded.spec.adaptation.stitch_lora.rank == 8 and loaded.spec.anchors[0].style == "deit3"
    assert _same_everywhere(loaded.model, v2_supernet) < 1e-6


def test_raw_state_dict_in_safetensors(v1_supernet, tmp_path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in v1_supernet.state_dict().items()}, tmp_path / "raw.safetensors")
    loaded = load_supernet(tmp_path / "raw.safetensors", num_heads=[2, 3, 4])
    assert loaded.source_format == "snnet_v1"


def test_malicious_pickle_refused_and_nothing_runs(tmp_path, v1_supernet):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": v1_supernet.state_dict(), "args": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError, match="could run code"):
        load_supernet(tmp_path / "evil.pth")
    assert not marker.exists()


def test_zip_bomb_refused(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (200 << 20))
    with pytest.raises(UnsafeFileError, match="zip bomb"):
        load_supernet(path)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:5000]), FormatError, "truncated"),
    (lambda p: p.write_bytes(b""), InputError, "empty"),
    (lambda p: p.write_text("hello, not a model"), InputError, "neither"),
])
def test_damaged_files(tmp_path, esta_supernet, mutate, error, match):
    path = save_supernet(esta_supernet, tmp_path / "s.safetensors")
    mutate(path)
    with pytest.raises(error, match=match):
        load_supernet(path)


def test_other_architecture_refused(tmp_path):
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}}, tmp_path / "r.pth")
    with pytest.raises(FormatError, match="not an SN-Net"):
        load_supernet(tmp_path / "r.pth")


def test_nan_weights_and_wrong_shapes(tmp_path, v1_supernet):
    sd = v1_supernet.state_dict()
    bad = dict(sd)
    bad["anchors.1.blocks.0.attn.qkv.weight"] = torch.full_like(sd["anchors.1.blocks.0.attn.qkv.weight"], float("nan"))
    torch.save({"model": bad}, tmp_path / "nan.pth")
    with pytest.raises(FormatError, match="NaN"):
        load_supernet(tmp_path / "nan.pth", num_heads=[2, 3, 4])
    bad = dict(sd)
    bad["stitch_layers.0.1.transform.weight"] = torch.zeros(5, 5)
    torch.save({"model": bad}, tmp_path / "shape.pth")
    with pytest.raises(FormatError, match="stitch_layers.0.1.transform.weight"):
        load_supernet(tmp_path / "shape.pth", num_heads=[2, 3, 4])


def test_newer_major_format_version_refused(tmp_path, esta_supernet):
    from safetensors.torch import save_file
    spec = esta_supernet.spec.to_json()
    spec["format_version"] = "2.0"
    save_file({k: v.contiguous() for k, v in esta_supernet.state_dict().items()}, tmp_path / "new.safetensors",
              metadata={METADATA_KEY: json.dumps(spec)})
    with pytest.raises(FormatError, match="newer"):
        load_supernet(tmp_path / "new.safetensors")


@pytest.mark.parametrize("heads", [[2, 3], [5, 3, 4]])
def test_bad_num_heads(tmp_path, v1_supernet, heads):
    torch.save({"model": v1_supernet.state_dict()}, tmp_path / "c.pth")
    with pytest.raises(InputError):
        load_supernet(tmp_path / "c.pth", num_heads=heads)


def test_every_error_is_one_line(tmp_path):
    with pytest.raises(EstaError) as info:
        load_supernet(tmp_path / "missing.pth")
    assert "\n" not in str(info.value)
