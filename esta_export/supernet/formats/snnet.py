"""SN-Net v1 and SN-Netv2 checkpoints, exactly as their training code saves them.

``{'model': state_dict, 'optimizer': ..., 'args': argparse.Namespace, ...}`` or ``{'model': ...}``
or a bare state dict. Loaded with ``torch.load(weights_only=True)`` allowing only
``argparse.Namespace``: a pickle that names any other global is refused before anything runs.
Widths, depths, patch and image size, classes and LoRA rank come from tensor shapes; head counts
follow the DeiT convention (width / 64) unless given, since no tensor reveals them.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Sequence

import torch

from ...errors import FormatError, InputError, UnsafeFileError
from ..anchors import AnchorConfig
from ..model import Supernet
from ..spec import AdaptationSpec, InputSpec, LoraSpec, SupernetSpec
from . import register_reader
from .checks import apply_num_heads, check_finite, load_strict

WIDTH_NAMES = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H"}
SNNETV2_LORA_ALPHA = 1.0            # loralib default used by SN-Netv2 (scale = 1 / r)
MAX_EXPANSION = 4                   # a checkpoint may not unpack to more than 4x its size (+64 MB)


def _is_torch_file(path: Path, head: bytes) -> bool:
    # Zip container (torch >= 1.6) or the legacy pickle protocol 2 magic.
    return head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02"


def _check_zip(path: Path) -> None:
    """Refuse zip bombs: torch stores entries uncompressed, so expansion beyond the file is suspect."""
    try:
        with zipfile.ZipFile(path) as zf:
            total = 0
            for info in zf.infolist():
                total += info.file_size
                if info.compress_type != zipfile.ZIP_STORED and info.file_size > 64 * info.compress_size + (1 << 20):
                    raise UnsafeFileError(f"{path}: entry {info.filename} expands {info.file_size // max(info.compress_size, 1)}x "
                                          f"(a zip bomb?)", hint="PyTorch never compresses checkpoints; use the original file")
            size = path.stat().st_size
            if total > MAX_EXPANSION * size + (64 << 20):
                raise UnsafeFileError(f"{path} claims {total / 1e9:.1f} GB of contents in a {size / 1e6:.1f} MB file "
                                      f"(a zip bomb?)", hint="use the checkpoint as the training code saved it")
    except zipfile.BadZipFile as err:
        raise FormatError(f"{path} is a damaged PyTorch checkpoint ({err})",
                          hint="the file is truncated or corrupt; download or copy it again") from None


def _torch_load(path: Path):
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        _check_zip(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0] if str(err) else "unknown"
        match = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"Unsupported global: ([\w.]+)", str(err))
        what = match.group(1) if match else first[:120]
        raise UnsafeFileError(f"{path} holds Python objects beyond tensors ({what}); loading it could run "
                              f"code, so it was refused without running anything",
                              hint="re-save the checkpoint with only tensors (torch.save({'model': model.state_dict()}))") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError) as err:
        raise FormatError(f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0][:160] if str(err) else type(err).__name__})",
                          hint="the file is truncated or damaged; download or copy it again") from None


@register_reader("snnet", _is_torch_file)
def read_snnet(path: Path, num_heads: Sequence[int] | None):
    obj = _torch_load(path)
    args = None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        args = obj.get("args")
        state = obj["model"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise FormatError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict",
                          hint="give the checkpoint written by SN-Net's training code")
    state = {k: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FormatError(f"{path}: entry {bad[0]!r} of the state dict is not a tensor",
                          hint="give the checkpoint written by SN-Net's training code")
    return read_state_dict(state, path, num_heads, args)


def _anchor_config(state: dict[str, torch.Tensor], a: int, path: Path) -> AnchorConfig:
    p = f"anchors.{a}."

    def need(key: str) -> torch.Tensor:
        if p + key not in state:
            raise FormatError(f"{path}: anchor {a} has no tensor {p + key}",
                              hint="this is not a DeiT/ViT SN-Net checkpoint")
        return state[p + key]

    def rank(key: str, n: int, what: str) -> torch.Tensor:
        t = need(key)
        if t.ndim != n or 0 in t.shape:
            raise FormatError(f"{path}: {p}{key} has shape {tuple(t.shape)}, expected {what}",
                              hint="this is not a DeiT/ViT SN-Net checkpoint, or it is damaged")
        return t

    cls = rank("cls_token", 3, "[1, 1, width]")
    width = int(cls.shape[-1])
    if tuple(cls.shape[:2]) != (1, 1):
        raise FormatError(f"{path}: {p}cls_token has shape {tuple(cls.shape)}, expected [1, 1, {width}]",
                          hint="this is not a DeiT/ViT SN-Net checkpoint, or it is damaged")
    pos = rank("pos_embed", 3, f"[1, tokens, {width}]")
    if pos.shape[0] != 1 or pos.shape[2] != width:
        raise FormatError(f"{path}: {p}pos_embed has shape {tuple(pos.shape)}, expected [1, tokens, {width}]",
                          hint="this is not a DeiT/ViT SN-Net checkpoint, or it is damaged")
    rank("blocks.0.mlp.fc1.weight", 2, f"[hidden, {width}]")
    rank("head.weight", 2, f"[classes, {width}]")
    proj = need("patch_embed.proj.weight")
    if proj.ndim != 4 or proj.shape[0] != width or proj.shape[2] != proj.shape[3]:
        raise FormatError(f"{path}: {p}patch_embed.proj.weight has shape {tuple(proj.shape)}, expected "
                          f"[{width}, C, P, P]", hint="this is not a DeiT/ViT SN-Net checkpoint")
    patch, in_chans = int(proj.shape[2]), int(proj.shape[1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(re.escape(p) + r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise FormatError(f"{path}: anchor {a} has no contiguous blocks.<i> tensors",
                          hint="this is not a DeiT/ViT SN-Net checkpoint")
    deit3 = p + "blocks.0.gamma_1" in state
    n_pos = need("pos_embed").shape[1]
    grid_tokens = n_pos if deit3 else n_pos - 1
    side = math.isqrt(max(grid_tokens, 0))
    if side * side != grid_tokens or side == 0:
        raise FormatError(f"{path}: {p}pos_embed has {n_pos} positions, not a square grid "
                          f"{'' if deit3 else 'plus a cls slot'}", hint="this is not a DeiT/ViT SN-Net checkpoint")
    fc1 = need("blocks.0.mlp.fc1.weight")
    head = need("head.weight")
    return AnchorConfig(
        name=WIDTH_NAMES.get(width, f"A{a}"), embed_dim=width, depth=max(blocks) + 1,
        num_heads=max(1, width // 64), mlp_ratio=fc1.shape[0] / width, patch_size=patch,
        img_size=side * patch, in_chans=in_chans, num_classes=int(head.shape[0]),
        style="deit3" if deit3 else "deit", qkv_bias=(p + "blocks.0.attn.qkv.bias") in state)


def read_state_dict(state: dict[str, torch.Tensor], path: Path, num_heads: Sequence[int] | None, args):
    anchor_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"anchors\.(\d+)\.", k))})
    if not anchor_ids:
        raise FormatError(f"{path} has no 'anchors.<i>.' tensors: it is not an SN-Net or SN-Netv2 checkpoint",
                          hint="give a stitched supernet checkpoint (or an esta-export .safetensors)")
    if anchor_ids != list(range(len(anchor_ids))):
        raise FormatError(f"{path}: anchor indices {anchor_ids} are not 0..N-1", hint="the checkpoint is damaged")
    anchors = [_anchor_config(state, a, path) for a in anchor_ids]
    names = [c.name for c in anchors]
    if len(set(names)) != len(names):
        anchors = [AnchorConfig(**{**c.to_json(), "name": f"{c.name}{i}"}) for i, c in enumerate(anchors)]
    groups = sorted({int(m.group(1)) for k in state if (m := re.match(r"stitch_layers\.(\d+)\.", k))})
    has_lora = any(re.match(r"stitch_layers\.\d+\.\d+\.transform\.lora_A$", k) for k in state)
    v2 = len(anchors) == 2 and (groups == [0, 1] or has_lora)
    if not groups:
        raise FormatError(f"{path} has anchors but no stitch_layers: it is not a stitched supernet",
                          hint="export single models with their own tools")
    stitch_lora = None
    if has_lora:
        key = next(k for k in state if k.endswith(".transform.lora_A"))
        stitch_lora = LoraSpec(rank=int(state[key].shape[0]), alpha=SNNETV2_LORA_ALPHA, targets=())
    if v2:
        space, params, fmt = "snnet_v2", {}, "snnet_v2"
        final_note = "SN-Netv2 two-way stitching"
    else:
        if _args(args).get("nearest_stitching", True) is False:
            raise FormatError(f"{path} was trained without nearest stitching; only the released SN-Net v1 "
                              f"setting is supported", hint="train with --nearest_stitching")
        space, params, fmt = "snnet_v1", {"kernel_size": 2, "stride": 1, "nearest": True}, "snnet_v1"
        final_note = "SN-Net v1 sliding-window stitching"
    spec = SupernetSpec(
        anchors=tuple(anchors), space=space, space_params=params,
        adaptation=AdaptationSpec(stitch_lora=stitch_lora),
        input=InputSpec(image_size=anchors[0].img_size, in_chans=anchors[0].in_chans),
        num_heads_source="convention",
        source={"format": fmt, "file": path.name,
                "args": None if args is None else {str(k): _jsonable(v) for k, v in _args(args).items()}},
    )
    notes = [f"detected {final_note}"]
    if num_heads is not None:
        spec, note = apply_num_heads(spec, num_heads)
        notes.append(note)
    else:
        notes.append("heads " + ",".join(str(a.num_heads) for a in spec.anchors)
                     + " (DeiT convention width/64; override with --num-heads)")
    try:
        model = Supernet(spec)
    except ValueError as err:
        raise FormatError(f"{path}: the anchors cannot form a {space} supernet ({err})",
                          hint="check that this is an SN-Net checkpoint") from None
    load_strict(model, state, path)
    check_finite(state, path)
    model.eval()
    return model, fmt, notes


def _args(args) -> dict:
    """The training arguments as a dict: SN-Net saves an argparse.Namespace; others save a dict
    (or something else, which is ignored: the tensors alone describe the architecture)."""
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return {k: v for k, v in list(args.items())[:10_000] if isinstance(k, str)}
    return {}


def _jsonable(v, depth: int = 0):
    if depth > 20:
        return str(v)[:200]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, depth + 1) for x in list(v)[:10_000]]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)[:1000]
