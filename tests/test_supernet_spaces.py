"""Stitch enumeration reproduces SN-Net v1 and SN-Netv2 ids exactly (STITCHING.md 2.3, 3.4)."""

import pytest

from esta_export.supernet import AnchorConfig, build_space

DEIT = [AnchorConfig("Ti", 192, 12, 3), AnchorConfig("S", 384, 12, 6), AnchorConfig("B", 768, 12, 12)]
DEIT3_SL = [AnchorConfig("S", 384, 12, 6, style="deit3"), AnchorConfig("L", 1024, 24, 16, style="deit3")]


def test_v1_deit_has_71_stitches_and_11_layers_per_pair():
    space = build_space("snnet_v1", DEIT)
    assert len(space) == 71 and space.ids == list(range(71))
    assert len(space.layer_shapes()) == 22
    assert space.layer_shapes()[(0, 0)] == (192, 384) and space.layer_shapes()[(1, 10)] == (384, 768)


def test_v1_closed_form_ids():
    # id c >= 3: pair = 0 if c < 37 else 1; p = (c-3) mod 34; layer = 0 if p < 4 else 1 + (p-4) div 3
    space = build_space("snnet_v1", DEIT)
    for c in range(3, 71):
        s = space.get(c)
        p = (c - 3) % 34
        assert s.layers == ((0 if c < 37 else 1, 0 if p < 4 else 1 + (p - 4) // 3),)
        assert not s.final_norm
    assert [space.get(i).final_norm for i in range(3)] == [True, True, True]


def test_v1_known_ids_and_positions():
    space = build_space("snnet_v1", DEIT)
    names = ["Ti", "S", "B"]
    assert space.get(24).route(names) == "Ti[0-7]>S[7-11]"          # README: id 24 = Ti->S at (7,7)
    first = [(s.segments[0].last, s.segments[1].first) for s in space.stitches[3:7]]
    assert first == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(s.segments[0].last, s.segments[1].first) for s in space.stitches[7:10]] == [(1, 2), (2, 1), (2, 2)]
    assert {s.depth for s in space.stitches[3:]} == {12, 13, 14}     # stitches can be deeper than anchors


def test_v2_two_way_134_used_id_13_excluded():
    space = build_space("snnet_v2", DEIT3_SL)
    assert len(space) == 134 and 13 not in space.ids and space.ids[-1] == 134
    names = ["S", "L"]
    assert space.get(2).route(names) == "S[0-0]>L[2-23]"
    assert space.get(25).route(names) == "L[0-1]>S[1-1]>L[4-23]"
    assert space.get(80).route(names) == "S[0-0]>L[2-3]>S[2-11]"
    assert space.get(134).route(names) == "S[0-9]>L[20-21]>S[11-11]"
    assert space.get(25).layers == ((1, 0), (0, 1))
    assert all(s.final_norm for s in space.stitches)
    shapes = space.layer_shapes()
    assert len(shapes) == 23 and shapes[(0, 0)] == (384, 1024) and shapes[(1, 10)] == (1024, 384)
    assert len(build_space("snnet_v2", DEIT3_SL, {"include_excluded": True})) == 135


def test_v2_equal_depths_s_b():
    space = build_space("snnet_v2", [AnchorConfig("S", 384, 12, 6, style="deit3"),
                                     AnchorConfig("B", 768, 12, 12, style="deit3")])
    assert len(space) == 134
    assert space.get(14).route(["S", "B"]) == "B[0-0]>S[1-11]"


@pytest.mark.parametrize("space,anchors", [
    ("snnet_v1", [AnchorConfig("Ti", 192, 12, 3)]),
    ("snnet_v1", [AnchorConfig("Ti", 192, 12, 3), AnchorConfig("S", 384, 6, 6)]),
    ("snnet_v2", DEIT),
])
def test_impossible_spaces_are_refused(space, anchors):
    with pytest.raises(ValueError):
        build_space(space, anchors)
