"""Closed-form FLOPs and parameter counts per stitch (fvcore convention, STITCHING.md section 5).

fvcore counts one multiply-add as one FLOP for linear, matmul and conv; an affine LayerNorm as 5
per element; softmax, GELU, additions, LayerScale and the attention scale are not counted. This
reproduces every published SN-Net v1 DeiT and SN-Netv2 DeiT3-S/L value exactly (e.g. DeiT-S
4,608,338,304; v1 id 3 4,696,010,496), including v1's missing final norm on stitched paths.
"""

from __future__ import annotations

from .supernet.anchors import AnchorConfig
from .supernet.spaces import Stitch


def embed_flops(a: AnchorConfig) -> int:
    return a.num_patches * (a.in_chans * a.patch_size ** 2) * a.embed_dim


def block_flops(a: AnchorConfig) -> int:
    n, d, h = a.num_tokens, a.embed_dim, a.mlp_hidden
    return n * d * 3 * d + n * d * d + 2 * n * d * h + 2 * n * n * d + 10 * n * d


def stitch_layer_flops(n_tokens: int, d_in: int, d_out: int) -> int:
    return n_tokens * d_in * d_out


def tail_flops(a: AnchorConfig, final_norm: bool) -> int:
    return (5 * a.num_tokens * a.embed_dim if final_norm else 0) + a.embed_dim * a.num_classes


def stitch_flops(anchors: list[AnchorConfig] | tuple[AnchorConfig, ...], stitch: Stitch) -> int:
    first, last = anchors[stitch.first_anchor], anchors[stitch.last_anchor]
    total = embed_flops(first)
    for n, seg in enumerate(stitch.segments):
        a = anchors[seg.anchor]
        if n > 0:
            prev = anchors[stitch.segments[n - 1].anchor]
            total += stitch_layer_flops(a.num_tokens, prev.embed_dim, a.embed_dim)
        total += seg.num_blocks * block_flops(a)
    return total + tail_flops(last, stitch.final_norm)


def embed_params(a: AnchorConfig) -> int:
    n_pos = a.num_patches if a.style == "deit3" else a.num_tokens
    return a.in_chans * a.patch_size ** 2 * a.embed_dim + a.embed_dim + a.embed_dim + n_pos * a.embed_dim


def block_params(a: AnchorConfig) -> int:
    d, h = a.embed_dim, a.mlp_hidden
    qkv_b = 3 * d if a.qkv_bias else 0
    ls = 2 * d if a.style == "deit3" else 0
    return 4 * d + (3 * d * d + qkv_b) + (d * d + d) + (h * d + h) + (d * h + d) + ls


def stitch_params(anchors: list[AnchorConfig] | tuple[AnchorConfig, ...], stitch: Stitch) -> int:
    """Parameters of the emitted slice (only what runs: v1 stitched slices carry no final norm)."""
    first, last = anchors[stitch.first_anchor], anchors[stitch.last_anchor]
    total = embed_params(first)
    for n, seg in enumerate(stitch.segments):
        a = anchors[seg.anchor]
        if n > 0:
            prev = anchors[stitch.segments[n - 1].anchor]
            total += prev.embed_dim * a.embed_dim + a.embed_dim
        total += seg.num_blocks * block_params(a)
    norm = 2 * last.embed_dim if stitch.final_norm else 0
    return total + norm + last.embed_dim * last.num_classes + last.num_classes
