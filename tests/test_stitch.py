"""esta-export stitch: timm anchors (built here with timm's own classes, random weights) -> supernet.

timm is the reference: pure-anchor stitches of the stitched supernet, and their exported ONNX
graphs, must compute what timm's own model computes. The command itself never imports timm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bad_input_corpus import assert_one_line_error, run_cli  # noqa: E402
from timm_shim import timm_vit  # noqa: E402

IMG, PATCH, CLASSES = 32, 8, 5


def timm_model(width: int, depth: int, heads: int, *, deit3: bool = False, seed: int = 0, **kw):
    vit = timm_vit()
    torch.manual_seed(seed)
    extra = dict(no_embed_class=True, init_values=1e-6) if deit3 else {}
    m = vit.VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=width, depth=depth, num_heads=heads,
                              num_classes=CLASSES, **extra, **kw).eval()
    with torch.no_grad():           # timm's init leaves biases and LayerScale near zero: make every tensor matter
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def save_st(m, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


def save_folder(m, folder: Path, arch: str, heads: int | None = None) -> Path:
    """The layout timm's save_for_hf writes (config.json + model.safetensors)."""
    folder.mkdir(parents=True)
    save_st(m, folder / "model.safetensors")
    cfg = {"architecture": arch, "num_classes": CLASSES, "num_features": m.embed_dim, "global_pool": "token",
           "pretrained_cfg": {"input_size": [3, IMG, IMG], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                              "num_classes": CLASSES, "label_names": [f"c{i}" for i in range(CLASSES)]}}
    if heads is not None:
        cfg["model_args"] = {"num_heads": heads}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    d = tmp_path_factory.mktemp("anchors")
    models = [timm_model(32, 3, 2, seed=1), timm_model(48, 3, 3, seed=2), timm_model(64, 3, 4, seed=3)]
    files = [save_folder(models[0], d / "ti", "vit_ti_test", heads=2),           # folder, heads from config
             d / "s.pth", save_st(models[2], d / "b.safetensors")]               # .pth (wrapped), .safetensors
    torch.save({"model": models[1].state_dict()}, files[1])
    return models, files


def load(path):
    from esta_export.supernet.formats import load_supernet
    return load_supernet(path)


def test_stitch_v1_pure_anchors_equal_timm_and_export_round_trip(family, tmp_path, capfd):
    models, files = family
    out = tmp_path / "sup.safetensors"
    # Given widest first: the command orders by width. Heads for .pth/.safetensors come from --num-heads.
    rc, so, se = run_cli(["stitch", files[2], files[0], files[1], "--space", "snnet_v1", "--out", out,
                          "--num-heads", "2,3,4", "--names", "Ti,S,B"], capfd)
    assert rc == 0, se
    assert "random inputs" in se                                     # the warning when no --data is given
    loaded = load(out)
    spec = loaded.spec
    assert [a.embed_dim for a in spec.anchors] == [32, 48, 64] and spec.names == ["Ti", "S", "B"]
    assert [a.num_heads for a in spec.anchors] == [2, 3, 4] and spec.num_heads_source == "user"
    assert spec.space == "snnet_v1" and len(loaded.model.space) == 3 + 2 * (3 * 3 - 2)
    assert spec.source["format"] == "anchors" and spec.source["calibration"]["source"] == "random"
    assert spec.input.mean == (0.5, 0.5, 0.5) and spec.input.labels == tuple(f"c{i}" for i in range(CLASSES))
    x = torch.randn(3, 3, IMG, IMG)
    with torch.no_grad():
        for sid, m in enumerate(models):
            np.testing.assert_allclose(loaded.model(x, sid).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-5)
    # Every stitching layer was fitted (a random Linear has a relative residual >= 1).
    assert spec.source["calibration"]["residual"]["max"] < 1.0

    exp = tmp_path / "export"
    rc, so, se = run_cli(["export", out, "--out", exp, "--stitches", "0,2,5", "-q"], capfd)
    assert rc == 0, se
    import onnxruntime as ort
    for sid in (0, 2):
        sess = ort.InferenceSession(str(exp / f"stitch_{sid:03d}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"pixels": x.numpy()})[0]
        np.testing.assert_allclose(got, models[sid](x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_stitch_with_data_v2_deit3_and_train_accepts_it(tmp_path, capfd):
    small, large = timm_model(32, 2, 2, deit3=True, seed=4), timm_model(64, 4, 4, deit3=True, seed=5)
    a = save_folder(small, tmp_path / "small", "deit3_small_test")                # heads: convention, no table hit
    b = save_st(large, tmp_path / "large.safetensors")
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.uniform(0, 1, (60, 16, 16)).astype(np.float32), y=np.arange(60) % CLASSES)
    out = tmp_path / "v2.safetensors"
    rc, so, se = run_cli(["stitch", a, b, "--space", "snnet_v2", "--out", out, "--data", data,
                          "--calib-images", "40", "--num-heads", "2,4"], capfd)
    assert rc == 0, se
    assert "random" not in se
    loaded = load(out)
    assert [a.style for a in loaded.spec.anchors] == ["deit3", "deit3"]
    assert loaded.spec.source["calibration"] == {**loaded.spec.source["calibration"], "source": "data", "images": 40}
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model(x, 0).numpy(), small(x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(loaded.model(x, 1).numpy(), large(x).numpy(), rtol=1e-5, atol=1e-5)
    trained = tmp_path / "esta.safetensors"
    rc, so, se = run_cli(["train", out, "--data", data, "--out", trained, "--epochs", "1", "--batch-size", "16",
                          "--lora-rank", "2", "--token-keep", "0.5", "-q"], capfd)
    assert rc == 0, se
    t = load(trained)
    assert t.spec.training["token_keep"] == 0.5 and len(t.spec.training["accuracy"]) == len(t.model.space)


def test_heads_from_config_and_convention(tmp_path, capfd):
    from esta_export.supernet.formats.timm import read_anchor
    m = timm_model(64, 1, 4)
    assert read_anchor(save_folder(m, tmp_path / "cfg", "x", heads=4)).config.num_heads == 4
    conv = read_anchor(save_st(m, tmp_path / "plain.safetensors"))
    assert conv.heads_source == "convention" and conv.config.num_heads == 1          # 64 / 64
    # A DeiT architecture name gives the heads when the width matches the named size.
    big = timm_model(192, 1, 3)
    assert read_anchor(save_folder(big, tmp_path / "ti", "deit_tiny_patch16_224")).config.num_heads == 3


def test_hugging_face_cache_layout(tmp_path):
    from esta_export.supernet.formats.timm import read_anchor
    m = timm_model(32, 1, 2)
    repo = tmp_path / "models--timm--tiny_test"
    save_folder(m, repo / "snapshots" / "abc1234", "vit_tiny_test", heads=2)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc1234")
    a = read_anchor(repo)
    assert a.config.embed_dim == 32 and a.config.num_heads == 2


@pytest.mark.parametrize("case,expect", [
    ("patch", r"patch size"),
    ("classes", r"class count"),
    ("image", r"image size.*--image-size"),
    ("depth", r"equal depth"),
    ("qknorm", r"qk-norm"),
    ("one", r"at least two anchors"),
    ("supernet", r"already a stitched supernet|esta-export supernet"),
    ("garbage", r"neither|not a readable"),
])
def test_bad_anchor_sets_end_in_one_line(case, expect, tmp_path, capfd):
    vit = timm_vit()
    base = save_st(timm_model(32, 2, 2), tmp_path / "base.safetensors")
    other = {
        "patch": lambda: vit.VisionTransformer(img_size=IMG, patch_size=4, embed_dim=48, depth=2, num_heads=2,
                                               num_classes=CLASSES),
        "classes": lambda: vit.VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=48, depth=2,
                                                 num_heads=2, num_classes=7),
        "image": lambda: vit.VisionTransformer(img_size=48, patch_size=PATCH, embed_dim=48, depth=2, num_heads=2,
                                               num_classes=CLASSES),
        "depth": lambda: vit.VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=48, depth=3, num_heads=2,
                                               num_classes=CLASSES),
        "qknorm": lambda: vit.VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=48, depth=2, num_heads=2,
                                                num_classes=CLASSES, qk_norm=True),
    }
    if case in other:
        second = save_st(other[case](), tmp_path / "second.safetensors")
        argv = [base, second]
    elif case == "one":
        argv = [base]
    elif case == "supernet":
        out = tmp_path / "made.safetensors"
        assert run_cli(["stitch", base, base, "--space", "snnet_v1", "--out", out, "-q"], capfd)[0] == 0
        argv = [base, out]
    else:
        junk = tmp_path / "junk.pth"
        junk.write_bytes(b"not a checkpoint at all" * 10)
        argv = [base, junk]
    out = tmp_path / "sup.safetensors"
    rc, so, se = run_cli(["stitch", *argv, "--space", "snnet_v1", "--out", out, "-q"], capfd)
    assert_one_line_error(rc, so, se, expect)
    assert not out.exists()


def test_image_size_resamples_position_embeddings(tmp_path, capfd):
    vit = timm_vit()
    a = save_st(timm_model(32, 2, 2), tmp_path / "a.safetensors")
    b = vit.VisionTransformer(img_size=48, patch_size=PATCH, embed_dim=48, depth=2, num_heads=2, num_classes=CLASSES)
    b = save_st(b, tmp_path / "b.safetensors")
    out = tmp_path / "sup.safetensors"
    rc, so, se = run_cli(["stitch", a, b, "--space", "snnet_v1", "--out", out, "--image-size", "48", "-q"], capfd)
    assert rc == 0, se
    assert {a.img_size for a in load(out).spec.anchors} == {48}
