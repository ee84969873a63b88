"""Turn a supernet into an ESTA-trainable one, and say which tensors train.

``adapt_supernet`` adds what the supernet lacks: shared LoRA on anchor linears, LoRA on stitching
layers, per-stitch bias tables (filled with the shared bias, so the function is unchanged), heads
for a new number of classes, and position embeddings resampled for a new image size. Existing
weights are copied; only new tensors start fresh.

``trainable_groups`` freezes the anchors and returns the tensors ESTA trains: LoRA (shared by every
stitch), stitching layers (LoRA, or the whole weight when they have no LoRA), per-stitch bias
tables, and the heads (shared per anchor, new task).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..supernet.layers import AdaptedLinear
from ..supernet.model import Supernet
from ..supernet.spec import ANCHOR_LINEARS, AdaptationSpec, LoraSpec


@dataclass
class TrainableGroups:
    lora: list[torch.nn.Parameter]          # shared LoRA on anchor linears
    stitching: list[torch.nn.Parameter]     # stitching layers' LoRA (or weights) and shared biases
    tables: list[torch.nn.Parameter]        # per-stitch bias tables [num_stitches, out]
    heads: list[torch.nn.Parameter]

    @property
    def all(self) -> list[torch.nn.Parameter]:
        return self.lora + self.stitching + self.tables + self.heads

    @property
    def scored(self) -> list[torch.nn.Parameter]:
        """What a stitch's importance score sums over (its own and its shared adaptation tensors)."""
        return self.lora + self.stitching + self.tables


def adapt_supernet(model: Supernet, *, lora: LoraSpec, stitch_lora: LoraSpec | None,
                   num_classes: int | None = None, image_size: int | None = None) -> tuple[Supernet, list[str]]:
    """Return ``model`` itself when nothing is missing, else a new Supernet holding its weights."""
    spec, ad = model.spec, model.spec.adaptation
    notes: list[str] = []
    if ad.lora is not None and ad.lora != lora:
        notes.append(f"the supernet already has LoRA rank {ad.lora.rank} on {list(ad.lora.targets)}; kept it")
    new_ad = AdaptationSpec(
        lora=ad.lora or lora,
        stitch_lora=ad.stitch_lora if ad.stitch_lora is not None else stitch_lora,
        stitch_bias=True,
        stitch_bias_targets=ad.stitch_bias_targets if ad.stitch_bias else ANCHOR_LINEARS)
    anchors = spec.anchors
    if num_classes is not None and any(a.num_classes != num_classes for a in anchors):
        notes.append(f"new heads for {num_classes} classes (the file's heads have "
                     f"{sorted({a.num_classes for a in anchors})})")
        anchors = tuple(replace(a, num_classes=num_classes) for a in anchors)
    if image_size is not None and any(a.img_size != image_size for a in anchors):
        for a in anchors:
            if image_size % a.patch_size:
                raise TrainingError(f"image size {image_size} is not a multiple of anchor {a.name}'s patch "
                                    f"size {a.patch_size}", hint=f"use a multiple of {a.patch_size}")
        notes.append(f"position embeddings resampled from {anchors[0].img_size} to {image_size} px")
        anchors = tuple(replace(a, img_size=image_size) for a in anchors)
    if new_ad == ad and anchors == spec.anchors:
        return model, notes
    new = Supernet(spec.replace(anchors=anchors, adaptation=new_ad))
    own = new.state_dict()
    state = {}
    for k, v in model.state_dict().items():
        if k not in own:
            continue
        if k.endswith("pos_embed") and v.shape != own[k].shape:
            v = _resample_pos_embed(v, own[k].shape, has_cls=v.shape[1] != _grid_tokens(v.shape[1]))
        if v.shape == own[k].shape:                      # a replaced head keeps its fresh init
            state[k] = v
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        for name, mod in new.named_modules():
            if isinstance(mod, AdaptedLinear) and mod.stitch_bias is not None and f"{name}.stitch_bias" in missing:
                base = mod.bias if mod.bias is not None else torch.zeros(mod.out_features)
                mod.stitch_bias.copy_(base.detach().expand_as(mod.stitch_bias))
    return new, notes


def _grid_tokens(n: int) -> int:
    """Largest square number <= n: the patch tokens of a position embedding with n entries."""
    g = int(n ** 0.5)
    return g * g


def _resample_pos_embed(pe: torch.Tensor, shape: torch.Size, has_cls: bool) -> torch.Tensor:
    """Bicubic resampling of the patch grid (as timm's resample_abs_pos_embed); the cls slot is kept."""
    prefix, grid = (pe[:, :1], pe[:, 1:]) if has_cls else (pe[:, :0], pe)
    g_old = int(grid.shape[1] ** 0.5)
    g_new = int((shape[1] - prefix.shape[1]) ** 0.5)
    d = pe.shape[-1]
    grid = grid.reshape(1, g_old, g_old, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, g_new * g_new, d)], dim=1)


def trainable_groups(model: Supernet) -> TrainableGroups:
    """Freeze everything, then unfreeze what ESTA trains; return it grouped."""
    for p in model.parameters():
        p.requires_grad_(False)
    g = TrainableGroups([], [], [], [])
    for anchor in model.anchors:
        for blk in anchor.blocks:
            for name in ANCHOR_LINEARS:
                lin: AdaptedLinear = blk.get_submodule(name)
                if lin.lora_A is not None:
                    g.lora += [lin.lora_A, lin.lora_B]
                if lin.stitch_bias is not None:
                    g.tables.append(lin.stitch_bias)
        g.heads += [anchor.head.weight] + ([anchor.head.bias] if anchor.head.bias is not None else [])
    for lin in model.stitch_linears():
        if lin.lora_A is not None:
            g.stitching += [lin.lora_A, lin.lora_B]
        else:
            g.stitching.append(lin.weight)                 # v1-style stitching layer: train it whole
        if lin.stitch_bias is not None:
            g.tables.append(lin.stitch_bias)
        elif lin.bias is not None:
            g.stitching.append(lin.bias)
    for p in g.all:
        p.requires_grad_(True)
    return g


def full_finetune_params(model: Supernet) -> list[torch.nn.Parameter]:
    """SN-Net style adaptation: every anchor and stitching weight trains (the benchmark's baseline)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return list(model.parameters())


def trained_param_count(model: Supernet, groups: TrainableGroups) -> int:
    """Parameters that receive gradients in ESTA training: every shared tensor, plus, in the per-stitch
    bias tables, only the rows of layers the stitch runs (a row of a block the stitch skips never gets a
    gradient and stays equal to the shared bias)."""
    tables = {id(t) for t in groups.tables}
    shared = sum(p.numel() for p in groups.all if id(p) not in tables)
    used = 0
    for s in model.space.stitches:
        for seg in s.segments:
            for b in range(seg.first, seg.last + 1):
                blk = model.anchors[seg.anchor].blocks[b]
                for name in ANCHOR_LINEARS:
                    lin: AdaptedLinear = blk.get_submodule(name)
                    if lin.stitch_bias is not None and id(lin.stitch_bias) in tables:
                        used += lin.out_features
        for key in s.layers:
            lin = model.stitch_layer(key)
            if lin.stitch_bias is not None and id(lin.stitch_bias) in tables:
                used += lin.out_features
    return shared + used

