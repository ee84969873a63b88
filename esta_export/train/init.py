"""Least-squares initialisation of stitching layers (SN-Net's rule, STITCHING.md 2.5 and 3.3).

One batch of training images runs through every anchor; for a cut position the source is the front
anchor's output of its last block before the cut, the target is the back anchor's input of its first
block after the cut (its embedding output when that block is 0). Tokens are flattened to rows, a
ones column is appended to the source, and the pseudo-inverse solution gives weight and bias. A layer
that serves several positions (SN-Net v1's sliding window) gets the average of their solutions; one
position per layer (SN-Netv2) is the plain solution.
"""

from __future__ import annotations

import torch

from ..supernet.model import Supernet


@torch.no_grad()
def anchor_features(model: Supernet, x: torch.Tensor) -> list[dict[int, torch.Tensor]]:
    """Per anchor: -1 = embedding output, b = output of block b (SN-Net's ``extract_block_features``).

    Runs with the active stitch of each anchor itself, so per-stitch biases of the pure anchor apply.
    """
    feats = []
    for a, anchor in enumerate(model.anchors):
        model.ctx.index = model.space.index(_anchor_stitch_id(model, a))
        try:
            h = anchor.forward_embed(x)
            out = {-1: h}
            for b, blk in enumerate(anchor.blocks):
                h = blk(h)
                out[b] = h
        finally:
            model.ctx.index = None
        feats.append(out)
    return feats


def _anchor_stitch_id(model: Supernet, anchor: int) -> int:
    for s in model.space.stitches:
        if s.is_anchor and s.first_anchor == anchor:
            return s.id
    raise ValueError(f"the stitch space has no pure stitch for anchor {anchor}")


def least_squares(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [d_out, d_in] and bias [d_out] minimising ||[src, 1] @ [W^T; b] - dst|| (rows = tokens)."""
    src = src.reshape(-1, src.shape[-1]).double()
    dst = dst.reshape(-1, dst.shape[-1]).double()
    a = torch.cat([src, torch.ones(src.shape[0], 1, dtype=src.dtype)], dim=1)
    sol = torch.linalg.pinv(a) @ dst               # [d_in + 1, d_out], as SN-Net's ps_inv
    return sol[:-1].T.contiguous().float(), sol[-1].contiguous().float()


def positions(model: Supernet) -> dict[tuple[int, int], set[tuple[int, int, int, int]]]:
    """Stitching layer key -> the distinct cut positions it serves: (front anchor, front block, back anchor, back block)."""
    out: dict[tuple[int, int], set[tuple[int, int, int, int]]] = {}
    for s in model.space.stitches:
        for n, key in enumerate(s.layers):
            front, back = s.segments[n], s.segments[n + 1]
            out.setdefault(key, set()).add((front.anchor, front.last, back.anchor, back.first))
    return out


@torch.no_grad()
def init_stitching_layers(model: Supernet, x: torch.Tensor) -> dict[tuple[int, int], float]:
    """Fit every stitching layer on the batch ``x``; return each layer's relative residual.

    The fitted bias also goes into every row of the layer's per-stitch bias table (if it has one),
    because that table, not ``bias``, is what the forward reads.
    """
    feats = anchor_features(model, x)
    residuals: dict[tuple[int, int], float] = {}
    for key, pos in sorted(positions(model).items()):
        ws, bs, errs = [], [], []
        for fa, fb, ba, bb in sorted(pos):
            src, dst = feats[fa][fb], feats[ba][bb - 1]
            w, b = least_squares(src, dst)
            ws.append(w)
            bs.append(b)
            pred = src @ w.T + b
            errs.append(float((pred - dst).pow(2).sum() / dst.pow(2).sum().clamp_min(1e-12)))
        layer = model.stitch_layer(key)
        layer.weight.copy_(torch.stack(ws).mean(0))
        bias = torch.stack(bs).mean(0)
        if layer.bias is not None:
            layer.bias.copy_(bias)
        if layer.stitch_bias is not None:
            layer.stitch_bias.copy_(bias.expand_as(layer.stitch_bias))
        residuals[key] = sum(errs) / len(errs)
    return residuals
