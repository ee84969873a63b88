"""The stitched supernet: anchors + stitching layers + adaptation, ``forward(x, stitch_id)``.

State-dict keys follow SN-Net/SN-Netv2 exactly (``anchors.<a>.<timm key>``,
``stitch_layers.<group>.<index>.transform.{weight,bias,lora_A,lora_B}``), plus the ESTA tensors
``...lora_A/lora_B`` on adapted anchor linears and ``...stitch_bias`` [num_stitches, out].
"""

from __future__ import annotations

import torch
from torch import nn

from .anchors import Anchor
from .layers import AdaptedLinear, StitchContext
from .spaces import Stitch, StitchSpace, build_space
from .spec import SupernetSpec


class StitchingLayer(nn.Module):
    """Token-wise Linear between widths, wrapped as SN-Net does (key ``.transform``)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.transform = AdaptedLinear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)


class Supernet(nn.Module):
    def __init__(self, spec: SupernetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.space: StitchSpace = build_space(spec.space, spec.anchors, spec.space_params)
        self.anchors = nn.ModuleList(Anchor(cfg) for cfg in spec.anchors)
        shapes = self.space.layer_shapes()
        groups = sorted({g for g, _ in shapes})
        self.stitch_layers = nn.ModuleList()
        for g in groups:
            n = 1 + max(i for gg, i in shapes if gg == g)
            self.stitch_layers.append(nn.ModuleList(StitchingLayer(*shapes[(g, i)]) for i in range(n)))
        self.ctx = StitchContext()
        self._apply_adaptation()

    def _apply_adaptation(self) -> None:
        ad = self.spec.adaptation
        n = len(self.space)
        for anchor in self.anchors:
            for blk in anchor.blocks:
                for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                    lin: AdaptedLinear = blk.get_submodule(name)
                    lin.bind(self.ctx)
                    if ad.lora is not None and name in ad.lora.targets:
                        lin.add_lora(ad.lora.rank, ad.lora.alpha)
                    if ad.stitch_bias and name in ad.stitch_bias_targets:
                        lin.add_stitch_bias(n, self.ctx)
        for layer in self.stitch_linears():
            layer.bind(self.ctx)
            if ad.stitch_lora is not None:
                layer.add_lora(ad.stitch_lora.rank, ad.stitch_lora.alpha)
            if ad.stitch_bias:
                layer.add_stitch_bias(n, self.ctx)

    # -- structure -------------------------------------------------------------------------------
    def stitch_linears(self) -> list[AdaptedLinear]:
        return [sl.transform for group in self.stitch_layers for sl in group]

    def stitch_layer(self, key: tuple[int, int]) -> AdaptedLinear:
        g, i = key
        return self.stitch_layers[g][i].transform

    @property
    def stitches(self) -> list[Stitch]:
        return self.space.stitches

    def route(self, stitch: Stitch) -> str:
        return stitch.route(self.spec.names)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, stitch_id: int, keep_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``keep_tokens`` [batch, k]: run only these patch tokens (1-based; the cls token always runs),
        training-time token dropping (PatchDropout)."""
        stitch = self.space.get(stitch_id)
        self.ctx.index = self.space.index(stitch_id)
        try:
            return self.forward_stitch(x, stitch, keep_tokens=keep_tokens)
        finally:
            self.ctx.index = None

    def forward_stitch(self, x: torch.Tensor, stitch: Stitch,
                       prefix_cache: dict[tuple[int, int], torch.Tensor] | None = None,
                       keep_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``stitch``. ``prefix_cache`` memoizes the first segment's activations per
        (anchor, last block) for one fixed ``x``; only valid when stitches share those blocks'
        weights (no per-stitch biases), see ``prefix_cacheable``."""
        anchors = self.anchors
        first = stitch.segments[0]
        h, start = None, 0
        if prefix_cache is not None:
            for b in range(first.last, -2, -1):
                if (first.anchor, b) in prefix_cache:
                    h, start = prefix_cache[(first.anchor, b)], b + 1
                    break
        if h is None:
            h = anchors[first.anchor].forward_embed(x)
            if keep_tokens is not None:
                idx = torch.cat([torch.zeros_like(keep_tokens[:, :1]), keep_tokens], dim=1)
                h = torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            if prefix_cache is not None:
                prefix_cache[(first.anchor, -1)] = h
        for b in range(start, first.last + 1):
            h = anchors[first.anchor].blocks[b](h)
            if prefix_cache is not None:
                prefix_cache[(first.anchor, b)] = h
        for n, seg in enumerate(stitch.segments[1:], start=1):
            h = self.stitch_layer(stitch.layers[n - 1])(h)
            blocks = anchors[seg.anchor].blocks
            for b in range(seg.first, seg.last + 1):
                h = blocks[b](h)
        return anchors[stitch.last_anchor].forward_tail(h, final_norm=stitch.final_norm)

    @property
    def prefix_cacheable(self) -> bool:
        """True when a stitch's first segment computes the same as the anchor's own blocks."""
        return not self.spec.adaptation.stitch_bias

    def reference(self, x: torch.Tensor, stitch_id: int,
                  prefix_cache: dict[tuple[int, int], torch.Tensor] | None = None) -> torch.Tensor:
        """``forward(x, stitch_id)``, reusing shared prefixes across calls when that is exact."""
        stitch = self.space.get(stitch_id)
        self.ctx.index = self.space.index(stitch_id)
        try:
            cache = prefix_cache if self.prefix_cacheable else None
            return self.forward_stitch(x, stitch, cache)
        finally:
            self.ctx.index = None
