"""Contract of every registered stitch space (timm-style: parametrised over the registry, so a new
space is tested the moment its file exists): enumerate, slice, round-trip through the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esta_export.supernet import Supernet, SupernetSpec
from esta_export.supernet.spaces import SPACES, space_names

SPACE_NAMES = space_names()


def _model(name: str) -> Supernet:
    from conftest import perturbed
    return perturbed(Supernet(SupernetSpec(SPACES[name].example_anchors(), name)))


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_enumerate(name: str) -> None:
    model = _model(name)
    space = model.space
    anchors = space.anchors
    ids = space.ids
    assert ids and len(set(ids)) == len(ids) == len(space) and ids == sorted(ids)
    assert all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    assert sum(s.is_anchor for s in space.stitches) == len(anchors)   # every anchor alone
    layers = space.layer_shapes()
    names = [a.name for a in anchors]
    routes = set()
    for s in space.stitches:
        assert space.get(s.id) is s and len(s.layers) == len(s.segments) - 1
        for seg in s.segments:
            assert 0 <= seg.anchor < len(anchors) and 0 <= seg.first <= seg.last < anchors[seg.anchor].depth
        for key, (a, b) in zip(s.layers, zip(s.segments, s.segments[1:])):
            assert layers[key] == (anchors[a.anchor].embed_dim, anchors[b.anchor].embed_dim)
        routes.add(s.route(names))
    assert len(routes) == len(space)   # no two ids name the same route


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_slice(name: str) -> None:
    from esta_export.slicing import slice_stitch
    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    stitched = [s for s in model.stitches if not s.is_anchor]
    sample = [s for s in model.stitches if s.is_anchor] + stitched[::max(1, len(stitched) // 6)]
    with torch.no_grad():   # every anchor and a spread of stitches (test_slicing does all of them)
        for s in sample + stitched[-1:]:
            ref = model(x, s.id)
            assert (slice_stitch(model, s.id)(x) - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item()), s.id


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_round_trip(name: str, tmp_path: Path) -> None:
    from esta_export.supernet.formats import load_supernet, save_supernet
    model = _model(name)
    save_supernet(model, tmp_path / "s.safetensors")
    back = load_supernet(tmp_path / "s.safetensors")
    assert back.spec.space == name and back.model.space.ids == model.space.ids
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for sid in (model.space.ids[0], model.space.ids[-1]):
            assert torch.equal(back.model.eval()(x, sid), model(x, sid))
