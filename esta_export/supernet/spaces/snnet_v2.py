"""SN-Netv2 two-way stitching (ziplab/SN-Netv2 ``classification/snnet.py``
``get_stitch_configs_bidirection`` L75-189).

Two anchors, small first (depth d0) and large (depth d1, r = d1 // d0). Stitching layers: group 0
small->large, one per small block (d0); group 1 large->small (d0 - 1). Id order: S, L; S->L (i);
L->S (k); L->S->L (k outer, i inner); S->L->S (i outer, k inner). Id ``2 + d0 - 1`` (S->L after the
last small block: nothing of L left to run) is generated but excluded, as the original does with its
"front != 11" test. Every path ends with the last anchor's final norm and head.
"""

from __future__ import annotations

from . import register_space
from ..anchors import AnchorConfig
from .base import Segment, Stitch, StitchSpace

S, L = 0, 1


@register_space
class SNNetV2(StitchSpace):
    name = "snnet_v2"
    defaults = {"include_excluded": False}

    @classmethod
    def example_anchors(cls) -> tuple[AnchorConfig, ...]:
        return (AnchorConfig("S", 32, 4, 2, img_size=32, patch_size=8, num_classes=10, style="deit3"),
                AnchorConfig("L", 64, 8, 4, img_size=32, patch_size=8, num_classes=10, style="deit3"))

    def check_anchors(self) -> None:
        if len(self.anchors) != 2:
            raise ValueError(f"SN-Netv2 stitching needs exactly two anchors, got {len(self.anchors)}")
        d0, d1 = self.anchors[S].depth, self.anchors[L].depth
        if d1 < d0 or d1 % d0:
            raise ValueError(f"SN-Netv2 needs the large anchor's depth to be a multiple of the small "
                             f"one's, got {d0} and {d1}")

    def enumerate(self) -> list[Stitch]:
        d0, d1 = self.anchors[S].depth, self.anchors[L].depth
        r = d1 // d0
        out: list[Stitch] = [Stitch(0, (Segment(S, 0, d0 - 1),), (), True),
                             Stitch(1, (Segment(L, 0, d1 - 1),), (), True)]
        nid = 2

        def add(segs, layers, excluded=False):
            nonlocal nid
            if not excluded or self.params["include_excluded"]:
                out.append(Stitch(nid, tuple(segs), tuple(layers), True))
            nid += 1

        for i in range(d0):                                   # S -> L
            segs = [Segment(S, 0, i)]
            if (i + 1) * r <= d1 - 1:
                segs.append(Segment(L, (i + 1) * r, d1 - 1))
            add(segs, [(0, i)] if len(segs) == 2 else [], excluded=(i == d0 - 1))
        for k in range(d0 - 1):                               # L -> S
            add([Segment(L, 0, (k + 1) * r - 1), Segment(S, k + 1, d0 - 1)], [(1, k)])
        for k in range(d0 - 1):                               # L -> S -> L
            for i in range(k + 1, d0 - 1):
                add([Segment(L, 0, (k + 1) * r - 1), Segment(S, k + 1, i), Segment(L, (i + 1) * r, d1 - 1)],
                    [(1, k), (0, i)])
        for i in range(d0 - 1):                               # S -> L -> S
            for k in range(i + 1, d0 - 1):
                add([Segment(S, 0, i), Segment(L, (i + 1) * r, (k + 1) * r - 1), Segment(S, k + 1, d0 - 1)],
                    [(0, i), (1, k)])
        return out

    def layer_shapes(self) -> dict[tuple[int, int], tuple[int, int]]:
        ds, dl = self.anchors[S].embed_dim, self.anchors[L].embed_dim
        d0 = self.anchors[S].depth
        shapes = {(0, i): (ds, dl) for i in range(d0)}
        shapes.update({(1, k): (dl, ds) for k in range(d0 - 1)})
        return shapes
