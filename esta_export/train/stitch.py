"""Stitch pretrained anchors into a supernet: order by width, check they fit together, build the stitch
space, fit every stitching layer by least squares on calibration images (SN-Net's initialisation).

``stitch_anchors`` is what ``esta-export stitch`` runs; the result is an unadapted native supernet
(plain stitching Linears) that ``esta-export train`` adapts with ESTA and ``export`` slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..errors import InputError
from ..supernet.anchors import AnchorConfig
from ..supernet.formats.snnet import WIDTH_NAMES
from ..supernet.formats.timm import AnchorFile
from ..supernet.model import Supernet
from ..supernet.spec import InputSpec, SupernetSpec
from .adapt import _resample_pos_embed
from .init import init_stitching_layers

SPACE_PARAMS = {"snnet_v1": {"kernel_size": 2, "stride": 1, "nearest": True}, "snnet_v2": {}}


@dataclass
class Stitched:
    model: Supernet
    residuals: dict[tuple[int, int], float]
    order: list[int]                       # input position of each anchor, narrowest first
    notes: list[str] = field(default_factory=list)


def order_by_width(anchors: Sequence[AnchorFile]) -> list[int]:
    """Indices narrowest first (then shallowest); equal anchors keep the order given."""
    return sorted(range(len(anchors)), key=lambda i: (anchors[i].config.embed_dim, anchors[i].config.depth))


def check_compatible(anchors: Sequence[AnchorFile], image_size: int | None = None) -> None:
    """Patch size, input channels, class count and (unless resampled) image size must agree."""
    checks = [("patch size", "patch_size", "stitched anchors must cut images into the same patches; "
                                           "pick anchors with one patch size"),
              ("input channels", "in_chans", "pick anchors trained on the same kind of images"),
              ("class count", "num_classes", "pick anchors trained on the same label set (or fine-tune them "
                                             "to one first)")]
    if image_size is None:
        checks.append(("image size", "img_size", "pass --image-size N to resample their position embeddings "
                                                 "to one size"))
    for what, attr, hint in checks:
        values = [getattr(a.config, attr) for a in anchors]
        if len(set(values)) > 1:
            listed = ", ".join(f"{a.path.name}: {v}" for a, v in zip(anchors, values))
            raise InputError(f"the anchors differ in {what} ({listed})", hint=hint)


def default_names(anchors: Sequence[AnchorFile]) -> list[str]:
    names = [WIDTH_NAMES.get(a.config.embed_dim, f"W{a.config.embed_dim}") for a in anchors]
    if len(set(names)) != len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    return names


def stitch_anchors(anchors: Sequence[AnchorFile], space: str, calibration: torch.Tensor, *,
                   names: Sequence[str] | None = None, num_heads: Sequence[int] | None = None,
                   image_size: int | None = None, input_spec: InputSpec | None = None,
                   source: dict | None = None) -> Stitched:
    """Build the supernet from ``anchors`` (any order) and LS-fit its stitching layers on ``calibration``
    (float32 NCHW, preprocessed as the anchors expect)."""
    if len(anchors) < 2:
        raise InputError(f"stitching needs at least two anchors, got {len(anchors)}",
                         hint="give two or more ViT/DeiT models, e.g. DeiT-Ti, DeiT-S and DeiT-B")
    if space not in SPACE_PARAMS:
        raise InputError(f"unknown stitch space {space!r}", hint=f"choose one of {', '.join(SPACE_PARAMS)}")
    check_compatible(anchors, image_size)
    order = order_by_width(anchors)
    ordered = [anchors[i] for i in order]
    notes: list[str] = []
    if order != list(range(len(anchors))):
        notes.append("anchors ordered by width: " + ", ".join(a.path.name for a in ordered))
    if names is None:
        names = default_names(ordered)
    elif len(names) != len(anchors):
        raise InputError(f"--names gives {len(names)} names for {len(anchors)} anchors",
                         hint="give one name per anchor, narrowest first, e.g. Ti,S,B")
    elif len(set(names)) != len(names) or any(not n or len(n) > 64 or not n.isprintable() for n in names):
        raise InputError(f"--names must be distinct, printable and at most 64 characters, got {list(names)}",
                         hint="e.g. --names Ti,S,B")
    heads_source = "file" if all(a.heads_source == "file" for a in ordered) else "convention"
    cfgs: list[AnchorConfig] = []
    for i, (a, name) in enumerate(zip(ordered, names)):
        cfg = replace(a.config, name=name)
        if num_heads is not None:
            if len(num_heads) != len(anchors):
                raise InputError(f"--num-heads gives {len(num_heads)} values for {len(anchors)} anchors",
                                 hint="give one head count per anchor, narrowest first, e.g. 3,6,12")
            if cfg.embed_dim % num_heads[i]:
                raise InputError(f"--num-heads {num_heads[i]} does not divide anchor {name}'s width {cfg.embed_dim}",
                                 hint="give head counts that divide each anchor's width")
            cfg = replace(cfg, num_heads=int(num_heads[i]))
            heads_source = "user"
        if image_size is not None:
            if image_size % cfg.patch_size:
                raise InputError(f"--image-size {image_size} is not a multiple of the patch size {cfg.patch_size}",
                                 hint=f"use a multiple of {cfg.patch_size}")
            cfg = replace(cfg, img_size=image_size)
        cfgs.append(cfg)
    spec = SupernetSpec(anchors=tuple(cfgs), space=space, space_params=dict(SPACE_PARAMS[space]),
                        input=input_spec or InputSpec(image_size=cfgs[0].img_size, in_chans=cfgs[0].in_chans),
                        num_heads_source=heads_source, source=source)
    try:
        model = Supernet(spec)
    except ValueError as err:
        hint = ("SN-Net v1 needs anchors of equal depth; SN-Netv2 (--space snnet_v2) takes two anchors whose depths "
                "divide" if "depth" in str(err) else "check the anchors and --space")
        raise InputError(f"these anchors cannot form a {space} supernet ({err})", hint=hint) from None
    with torch.no_grad():
        for anchor, a, cfg in zip(model.anchors, ordered, cfgs):
            state = dict(a.state)
            pe = state["pos_embed"]
            target = anchor.pos_embed.shape
            if pe.shape != target:
                state["pos_embed"] = _resample_pos_embed(pe, target, has_cls=cfg.style != "deit3")
                notes.append(f"{cfg.name}: position embeddings resampled from {a.config.img_size} to "
                             f"{cfg.img_size} px")
            anchor.load_state_dict(state, strict=True)
    if calibration.shape[1:] != (cfgs[0].in_chans, cfgs[0].img_size, cfgs[0].img_size):
        raise InputError(f"calibration images have shape {tuple(calibration.shape[1:])}, the anchors take "
                         f"{(cfgs[0].in_chans, cfgs[0].img_size, cfgs[0].img_size)}",
                         hint="give images of the anchors' kind (the command resizes --data itself)")
    model.eval()
    residuals = init_stitching_layers(model, calibration)
    return Stitched(model, residuals, order, notes)
