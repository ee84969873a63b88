"""SN-Net v1 (CVPR 2023) sliding-window stitching with nearest anchor pairs.

Reproduces ``paired_stitching`` / ``get_stitch_configs`` of ziplab/SN-Net ``stitching_deit/utils.py``
(L247-348): a window of ``kernel_size`` blocks slides with ``stride`` over block ids; every ordered
pair (j, k) inside window w not listed yet becomes a stitch position served by stitching layer w.
A position (j, k) runs front blocks 0..j, the layer, then back blocks k..depth-1. Ids: anchors
first (0..A-1), then pair 0's positions, pair 1's, ... Stitched paths skip the back anchor's final
norm (``forward_head`` has no norm in timm), pure anchors keep it.
"""

from __future__ import annotations

from . import register_space
from .base import Segment, Stitch, StitchSpace


def window_positions(depth: int, kernel_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(front block j, back block k, layer id) in SN-Net's order."""
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int, int]] = []
    for layer, start in enumerate(range(0, depth - kernel_size + 1, stride)):
        ids = list(range(start, start + kernel_size))
        for j in ids:
            for k in ids:
                if (j, k) not in seen:
                    seen.add((j, k))
                    out.append((j, k, layer))
    return out


@register_space
class SNNetV1(StitchSpace):
    name = "snnet_v1"
    defaults = {"kernel_size": 2, "stride": 1, "nearest": True}

    def check_anchors(self) -> None:
        if len(self.anchors) < 2:
            raise ValueError("SN-Net v1 stitching needs at least two anchors")
        depths = {a.depth for a in self.anchors}
        if len(depths) != 1:
            raise ValueError(f"SN-Net v1 stitching needs anchors of equal depth, got {sorted(depths)}")
        if not self.params["nearest"]:
            raise ValueError("only nearest stitching (the released SN-Net v1 setting) is supported")

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(a, a + 1) for a in range(len(self.anchors) - 1)]

    def positions(self) -> list[tuple[int, int, int]]:
        return window_positions(self.anchors[0].depth, self.params["kernel_size"], self.params["stride"])

    def enumerate(self) -> list[Stitch]:
        depth = self.anchors[0].depth
        stitches = [Stitch(i, (Segment(i, 0, depth - 1),), (), True) for i in range(len(self.anchors))]
        next_id = len(self.anchors)
        for pair, (front, back) in enumerate(self.pairs):
            for j, k, layer in self.positions():
                segs = (Segment(front, 0, j), Segment(back, k, depth - 1))
                stitches.append(Stitch(next_id, segs, ((pair, layer),), final_norm=False))
                next_id += 1
        return stitches

    def layer_shapes(self) -> dict[tuple[int, int], tuple[int, int]]:
        n_layers = 1 + max(layer for _, _, layer in self.positions())
        return {
            (pair, layer): (self.anchors[f].embed_dim, self.anchors[b].embed_dim)
            for pair, (f, b) in enumerate(self.pairs) for layer in range(n_layers)
        }
