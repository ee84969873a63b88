"""Every stitch of both spaces: the standalone slice equals the supernet at that stitch (tier 1)."""

import pytest
import torch

from esta_export.errors import StitchError
from esta_export.slicing import slice_stitch


@pytest.mark.parametrize("fixture", ["v1_supernet", "esta_supernet", "v2_supernet"])
def test_every_stitch_slices_exactly(request, fixture):
    model = request.getfixturevalue(fixture)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for s in model.stitches:
            sl = slice_stitch(model, s.id)
            ref = model(x, s.id)
            assert (sl(x) - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item()), s.id


def test_slice_holds_only_what_it_runs(esta_supernet):
    sl = slice_stitch(esta_supernet, 3)          # Ti block 0 -> S blocks 0..3
    keys = set(sl.state_dict())
    assert not any("lora" in k or "stitch_bias" in k for k in keys)
    assert "norm.weight" not in keys                # v1 stitched path runs no final norm
    assert len(sl.segments[0]) == 1 and len(sl.segments[1]) == 4


def test_unknown_stitch_id(esta_supernet):
    with pytest.raises(StitchError, match="ids 0..22"):
        slice_stitch(esta_supernet, 999)
