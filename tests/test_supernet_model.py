"""Forward semantics: SN-Net v1's missing final norm, SN-Netv2's LoRA rule, DeiT-3 positions."""

import torch

from esta_export.supernet import AdaptationSpec, LoraSpec, Supernet, SupernetSpec

from conftest import perturbed, tiny_anchors


def _manual_v1(model, x, sid, with_norm):
    """SN-Net v1 stitched forward written out from STITCHING.md 2.4."""
    s = model.space.get(sid)
    front, back = model.anchors[s.segments[0].anchor], model.anchors[s.segments[1].anchor]
    h = front.forward_embed(x)
    for b in range(s.segments[0].first, s.segments[0].last + 1):
        h = front.blocks[b](h)
    h = model.stitch_layer(s.layers[0])(h)
    for b in range(s.segments[1].first, s.segments[1].last + 1):
        h = back.blocks[b](h)
    if with_norm:
        h = back.norm(h)
    return back.head(h[:, 0])


@torch.no_grad()
def test_v1_stitched_paths_skip_final_norm_anchors_keep_it(v1_supernet):
    x = torch.randn(2, 3, 32, 32)
    for sid in (3, 10, len(v1_supernet.space) - 1):
        out = v1_supernet(x, sid)
        assert torch.equal(out, _manual_v1(v1_supernet, x, sid, with_norm=False))
        assert not torch.allclose(out, _manual_v1(v1_supernet, x, sid, with_norm=True), atol=1e-4)
    a = v1_supernet.anchors[1]
    assert torch.equal(v1_supernet(x, 1), a(x))       # pure anchor = the anchor's own forward, norm included


@torch.no_grad()
def test_v2_lora_merge_rule_matches_unmerged_forward(v2_supernet):
    layer = v2_supernet.stitch_layer((0, 1))
    r = layer.lora_A.shape[0]
    expected = layer.weight + (1.0 / r) * layer.lora_B @ layer.lora_A     # alpha = 1, scale = 1/r
    assert torch.allclose(layer.merged_weight(), expected)
    x = torch.randn(5, 7, layer.in_features)
    merged = torch.nn.functional.linear(x, layer.merged_weight(), layer.bias)
    assert torch.allclose(layer(x), merged, atol=1e-5)
    assert (layer.lora_B.abs().sum() > 0)   # the delta is real, not a zero that would hide a bug


@torch.no_grad()
def test_deit3_adds_position_before_cls(v2_supernet):
    a = v2_supernet.anchors[0]
    x = torch.randn(1, 3, 32, 32)
    tokens = a.forward_embed(x)
    patches = a.patch_embed(x)
    assert a.pos_embed.shape[1] == patches.shape[1]
    assert torch.allclose(tokens[:, 1:], patches + a.pos_embed)
    assert torch.allclose(tokens[:, 0], a.cls_token[:, 0])


@torch.no_grad()
def test_per_stitch_bias_rows_are_the_stitch_own(esta_supernet):
    x = torch.randn(2, 3, 32, 32)
    before = esta_supernet(x, 5).clone()
    lin = esta_supernet.anchors[0].blocks[0].attn.qkv
    lin.stitch_bias[esta_supernet.space.index(6)].add_(1.0)      # another stitch's row
    assert torch.equal(esta_supernet(x, 5), before)
    lin.stitch_bias[esta_supernet.space.index(5)].add_(1.0)      # its own row
    assert not torch.equal(esta_supernet(x, 5), before)


def test_lora_is_one_tensor_shared_by_all_stitches():
    spec = SupernetSpec(tiny_anchors(), "snnet_v1", adaptation=AdaptationSpec(lora=LoraSpec(2, 2.0)))
    model = perturbed(Supernet(spec))
    names = [n for n, _ in model.named_parameters() if ".lora_A" in n]
    # one pair per adapted linear (qkv + proj) per block per anchor, none per stitch
    assert len(names) == sum(a.depth for a in spec.anchors) * 2
