"""Stitch -> standalone module: only the weights the stitch runs, LoRA merged, its own biases.

The slice is a plain ``nn.Module`` (Linear/LayerNorm/Conv2d) with no adaptation machinery, so it
runs, exports and deploys like any ViT. Its state-dict keys are ``patch_embed.*``, ``cls_token``,
``pos_embed``, ``segments.<s>.<b>.<timm block keys>``, ``stitches.<s>.*``, ``norm.*``, ``head.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import StitchError
from .supernet.anchors import AnchorConfig, Block, PatchEmbed, embed_tokens
from .supernet.layers import AdaptedLinear
from .supernet.model import Supernet
from .supernet.spaces import Stitch


@dataclass(frozen=True)
class SliceInfo:
    stitch: Stitch
    route: str
    anchors: tuple[AnchorConfig, ...]        # the anchor of each segment, in order


class StitchModel(nn.Module):
    def __init__(self, info: SliceInfo) -> None:
        super().__init__()
        self.info = info
        first, last = info.anchors[0], info.anchors[-1]
        self.style = first.style
        self.patch_embed = PatchEmbed(first)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, first.embed_dim))
        n_pos = first.num_patches if first.style == "deit3" else first.num_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, first.embed_dim))
        self.segments = nn.ModuleList(
            nn.ModuleList(Block(a) for _ in range(seg.num_blocks))
            for a, seg in zip(info.anchors, info.stitch.segments))
        self.stitches = nn.ModuleList(
            nn.Linear(a.embed_dim, b.embed_dim) for a, b in zip(info.anchors[:-1], info.anchors[1:]))
        self.norm = nn.LayerNorm(last.embed_dim, eps=last.ln_eps) if info.stitch.final_norm else None
        self.head = nn.Linear(last.embed_dim, last.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = embed_tokens(x, self.patch_embed, self.cls_token, self.pos_embed, self.style)
        for n, seg in enumerate(self.segments):
            if n > 0:
                h = self.stitches[n - 1](h)
            for blk in seg:
                h = blk(h)
        h = h[:, 0]
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h)


def _share(dst: nn.Module, name: str, value: torch.Tensor) -> None:
    """Point ``dst.name`` at ``value`` without copying. Slices are read-only views of the
    supernet's weights, except where the slice owns a new tensor (merged LoRA)."""
    setattr(dst, name, nn.Parameter(value.detach(), requires_grad=False))


def _share_module(dst: nn.Module, src: nn.Module) -> None:
    for name, value in src.named_parameters(recurse=False):
        _share(dst, name, value)


@torch.no_grad()
def _copy_linear(dst: nn.Linear, src: AdaptedLinear, stitch_index: int) -> None:
    _share(dst, "weight", src.merged_weight())
    bias = src.active_bias(stitch_index)
    _share(dst, "bias", torch.zeros(dst.out_features) if bias is None else bias)


def resolve_stitch(model: Supernet, stitch_id: int) -> Stitch:
    try:
        return model.space.get(stitch_id)
    except KeyError:
        ids = model.space.ids
        raise StitchError(f"stitch id {stitch_id} is not in this supernet's {model.spec.space} space "
                          f"({len(ids)} stitches, ids {ids[0]}..{ids[-1]})",
                          hint="see 'esta-export inspect' for the ids") from None


@torch.no_grad()
def slice_stitch(model: Supernet, stitch_id: int) -> StitchModel:
    stitch = resolve_stitch(model, stitch_id)
    idx = model.space.index(stitch_id)
    cfgs = tuple(model.spec.anchors[s.anchor] for s in stitch.segments)
    # Built on the meta device: every tensor is then pointed at the supernet's (or a merged one),
    # so no time goes into random initialisation or copies.
    with torch.device("meta"):
        out = StitchModel(SliceInfo(stitch, model.route(stitch), cfgs))
    first = model.anchors[stitch.first_anchor]
    _share_module(out.patch_embed.proj, first.patch_embed.proj)
    _share(out, "cls_token", first.cls_token)
    _share(out, "pos_embed", first.pos_embed)
    for seg_mod, seg in zip(out.segments, stitch.segments):
        src_blocks = model.anchors[seg.anchor].blocks
        for dst, b in zip(seg_mod, range(seg.first, seg.last + 1)):
            src = src_blocks[b]
            _share_module(dst.norm1, src.norm1)
            _share_module(dst.norm2, src.norm2)
            for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                _copy_linear(dst.get_submodule(name), src.get_submodule(name), idx)
            if src.gamma_1 is not None:
                _share(dst, "gamma_1", src.gamma_1)
                _share(dst, "gamma_2", src.gamma_2)
    for dst, key in zip(out.stitches, stitch.layers):
        _copy_linear(dst, model.stitch_layer(key), idx)
    last = model.anchors[stitch.last_anchor]
    if out.norm is not None:
        _share_module(out.norm, last.norm)
    _copy_linear(out.head, last.head, idx)
    return out.eval()
