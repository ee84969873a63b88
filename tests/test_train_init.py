"""Least-squares stitching-layer initialisation (SN-Net's rule)."""

from __future__ import annotations

import torch

from conftest import perturbed, tiny_anchors
from esta_export.supernet import AdaptationSpec, LoraSpec, Supernet, SupernetSpec
from esta_export.train.init import anchor_features, init_stitching_layers, least_squares, positions


def test_least_squares_recovers_an_affine_map_with_its_bias():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(4, 20, 8, generator=g)
    w, b = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    fw, fb = least_squares(src, src @ w.T + b)
    assert torch.allclose(fw, w, atol=1e-4) and torch.allclose(fb, b, atol=1e-4)


def _mse(model, feats, key):
    total = 0.0
    for fa, fb, ba, bb in positions(model)[key]:
        src, dst = feats[fa][fb], feats[ba][bb - 1]
        with torch.no_grad():
            total += float((model.stitch_layer(key)(src) - dst).pow(2).mean())
    return total


def test_fitted_layers_map_front_onto_back_activations_better_than_random():
    model = perturbed(Supernet(SupernetSpec(tiny_anchors(), "snnet_v1")), scale=0.2)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    feats = anchor_features(model, x)
    before = {k: _mse(model, feats, k) for k in positions(model)}
    residuals = init_stitching_layers(model, x)
    held_out = anchor_features(model, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    for key in positions(model):
        after = _mse(model, feats, key)
        assert after < 0.5 * before[key], (key, after, before[key])
        assert _mse(model, held_out, key) < before[key]
        assert 0.0 <= residuals[key] < 1.0


def test_shared_v1_layer_averages_its_positions_and_v2_gets_one_per_position():
    v1 = Supernet(SupernetSpec(tiny_anchors(), "snnet_v1"))
    pos = positions(v1)
    assert len(pos[(0, 0)]) == 4 and len(pos[(0, 1)]) == 3        # layer 0 serves 4 cuts, others 3
    v2 = Supernet(SupernetSpec(tiny_anchors("deit3", depths=(2, 4), widths=(32, 64)), "snnet_v2"))
    assert all(len(p) == 1 for p in positions(v2).values())
    x = torch.randn(8, 3, 32, 32)
    perturbed(v2, 0.2)
    init_stitching_layers(v2, x)
    feats = anchor_features(v2, x)
    ((fa, fb, ba, bb),) = positions(v2)[(0, 0)]
    w, b = least_squares(feats[fa][fb], feats[ba][bb - 1])
    assert torch.allclose(v2.stitch_layer((0, 0)).weight, w, atol=1e-5)


def test_fitted_bias_lands_in_every_row_of_the_per_stitch_table():
    spec = SupernetSpec(tiny_anchors(), "snnet_v1",
                        adaptation=AdaptationSpec(lora=LoraSpec(2, 2.0), stitch_lora=LoraSpec(2, 2.0, ()),
                                                  stitch_bias=True))
    model = perturbed(Supernet(spec), 0.1)
    init_stitching_layers(model, torch.randn(8, 3, 32, 32))
    layer = model.stitch_layer((1, 2))
    assert torch.equal(layer.stitch_bias, layer.bias.expand_as(layer.stitch_bias))
