"""The closed form reproduces the published fvcore figures to the last digit (STITCHING.md 5)."""

from esta_export.flops import stitch_flops, stitch_params
from esta_export.slicing import slice_stitch
from esta_export.supernet import AnchorConfig, build_space

DEIT = [AnchorConfig("Ti", 192, 12, 3), AnchorConfig("S", 384, 12, 6), AnchorConfig("B", 768, 12, 12)]


def test_published_snnet_v1_values():
    space = build_space("snnet_v1", DEIT)
    assert stitch_flops(DEIT, space.get(1)) == 4_608_338_304          # DeiT-S
    assert stitch_flops(DEIT, space.get(3)) == 4_696_010_496          # Ti block 0 -> S blocks 0..11
    assert round(stitch_flops(DEIT, space.get(24)) / 1e9, 2) == 2.76  # README id 24
    assert round(stitch_flops(DEIT, space.get(56)) / 1e9, 2) == 10.05  # README id 56
    assert round(stitch_flops(DEIT, space.get(0)) / 1e9, 2) == 1.26   # DeiT-Ti, smallest published


def test_published_snnet_v2_values():
    anchors = [AnchorConfig("S", 384, 12, 6, style="deit3"), AnchorConfig("L", 1024, 24, 16, style="deit3")]
    space = build_space("snnet_v2", anchors)
    assert stitch_flops(anchors, space.get(2)) == 56_843_745_792
    values = [stitch_flops(anchors, s) for s in space.stitches]
    assert round(min(values) / 1e9, 2) == 4.61 and round(max(values) / 1e9, 2) == 61.60


def test_params_equal_the_emitted_slice(esta_supernet, v2_supernet):
    for model in (esta_supernet, v2_supernet):
        for s in model.space.stitches:
            sl = slice_stitch(model, s.id)
            assert sum(p.numel() for p in sl.parameters()) == stitch_params(model.spec.anchors, s)
