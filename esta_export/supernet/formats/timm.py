"""Single pretrained ViT/DeiT/DeiT-3 models (stitching anchors) as timm and Meta's DeiT save them.

Accepted: a ``.safetensors`` state dict, a ``.pth``/``.bin``/``.pt`` state dict (``torch.load`` with
``weights_only=True``; ``{'model': ...}`` / ``{'state_dict': ...}`` wrappers as DeiT releases use),
or a timm model folder: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``), the
layout ``timm.models.save_for_hf`` writes and the Hugging Face cache holds (``models--org--name``
with ``snapshots/<rev>/`` is resolved to its ``refs/main`` snapshot). timm itself is never imported.

Key names are timm's (``blocks.<i>.ls1.gamma`` is renamed to Meta DeiT-3's ``gamma_1``, which
esta-export's anchors use). Everything the anchor needs comes from tensor shapes; the head count,
mean/std and label names come from ``config.json`` when it has them, else the head count follows
the DeiT convention (width / 64). Variants whose forward differs from a plain cls-token ViT
(distillation token, register tokens, qk-norm, pre-norm, average pooling) are refused by name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import FormatError, InputError
from ...fsutil import sha256_file
from ..anchors import Anchor, AnchorConfig

# timm architecture name fragment -> (width, heads): the DeiT/ViT/DeiT-3 family sizes.
SIZES = {"tiny": (192, 3), "small": (384, 6), "medium": (512, 8), "base": (768, 12), "large": (1024, 16),
         "huge": (1280, 16)}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_CONFIG_BYTES = 4 << 20
# Keys that mark a ViT variant whose forward esta-export's anchors do not reproduce.
VARIANTS = (
    (r"^dist_token$|^head_dist\.", "a distillation token (distilled DeiT)",
     "use the non-distilled checkpoint (e.g. deit_small_patch16_224)"),
    (r"^reg_token$", "register tokens", "use a ViT without register tokens"),
    (r"\.attn\.(q_norm|k_norm|norm)\.", "qk-norm / attention norm layers", "use a plain ViT/DeiT checkpoint"),
    (r"^norm_pre\.", "a pre-norm layer (CLIP-style ViT)", "use a plain ViT/DeiT checkpoint"),
    (r"^fc_norm\.", "an fc_norm layer (average-pooling ViT)", "use a cls-token ViT/DeiT checkpoint"),
    (r"^attn_pool\.", "an attention-pooling head", "use a cls-token ViT/DeiT checkpoint"),
    (r"\.mlp\.(fc1_g|fc1_x|w12|w3)\.|\.mlp\.norm\.", "a gated (SwiGLU) MLP", "use a plain ViT/DeiT checkpoint"),
)


@dataclass
class AnchorFile:
    """One anchor read from disk: its architecture, its weights under esta-export's anchor keys."""

    path: Path
    config: AnchorConfig
    state: dict[str, torch.Tensor]
    sha256: str
    heads_source: str                     # file | convention
    architecture: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"file": self.path.name, "sha256": self.sha256, "architecture": self.architecture,
                "embed_dim": self.config.embed_dim, "depth": self.config.depth,
                "num_heads": self.config.num_heads, "num_heads_source": self.heads_source,
                "style": self.config.style}


def read_anchor(path: str | Path) -> AnchorFile:
    """Read one anchor file or timm model folder. Errors are one-line InputError/FormatError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"anchor not found: {path}", hint="give a .safetensors/.pth file or a timm model folder")
    config: dict = {}
    if path.is_dir():
        folder = _resolve_folder(path)
        config = _read_config(folder / "config.json") if (folder / "config.json").is_file() else {}
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise InputError(f"{path} holds no {' or '.join(WEIGHT_FILES)}",
                             hint="give a timm model folder (config.json + model.safetensors) or a weights file")
        state = _read_weights(weights)
    else:
        weights = path
        state = _read_weights(path)
    state = _unwrap(state, weights)
    cfg, heads_source, notes = _anchor_config(state, config, weights)
    state = _to_anchor_keys(state, cfg, weights)
    pcfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    return AnchorFile(
        path=path, config=cfg, state=state, sha256=sha256_file(weights), heads_source=heads_source,
        architecture=_opt_str(config.get("architecture")), mean=_floats(pcfg.get("mean"), cfg.in_chans),
        std=_floats(pcfg.get("std"), cfg.in_chans, positive=True),
        labels=_labels(config.get("label_names", pcfg.get("label_names")), cfg.num_classes), notes=notes)


# -- files ----------------------------------------------------------------------------------------
def _resolve_folder(path: Path) -> Path:
    """A timm folder as is, or a Hugging Face cache repo folder (``models--org--name``) -> its snapshot."""
    if (path / "config.json").is_file() or any((path / f).is_file() for f in WEIGHT_FILES):
        return path
    snaps = path / "snapshots"
    if snaps.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file():
            rev = ref.read_text(errors="replace").strip()
            if re.fullmatch(r"[0-9a-f]{7,64}", rev) and (snaps / rev).is_dir():
                return snaps / rev
        found = sorted(p for p in snaps.iterdir() if p.is_dir())
        if len(found) == 1:
            return found[0]
        raise InputError(f"{path} holds {len(found)} snapshots and no usable refs/main",
                         hint=f"give one snapshot folder, e.g. {snaps}/<revision>")
    raise InputError(f"{path} is a folder without config.json or {' / '.join(WEIGHT_FILES)}",
                     hint="give a timm model folder (config.json + model.safetensors) or a weights file")


def _read_config(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise FormatError(f"{path} is {path.stat().st_size >> 20} MB, too large for a model config",
                              hint="use the config.json timm wrote")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise FormatError(f"{path} is not a readable JSON model config ({type(err).__name__})",
                          hint="use the config.json timm wrote, or pass the weights file alone") from None
    if not isinstance(d, dict):
        raise FormatError(f"{path} is not a JSON object", hint="use the config.json timm wrote")
    return d


def _read_weights(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) > 9 and head[8:9] == b"{":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        from .native import METADATA_KEY
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if METADATA_KEY in meta:
                raise InputError(f"{path} is an esta-export supernet, not a single anchor",
                                 hint="use it directly with train/export, or give the anchors' own files")
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise FormatError(f"{path} is not a readable .safetensors file ({str(err)[:160]})",
                              hint="the file is truncated or damaged; copy or download it again") from None
    from .snnet import _is_torch_file, _torch_load
    if not _is_torch_file(path, head):
        raise FormatError(f"{path} is neither a .safetensors nor a PyTorch state dict",
                          hint="give a timm/DeiT checkpoint (.safetensors, .pth, .bin) or a timm model folder")
    return _torch_load(path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise FormatError(f"{path} holds no state dict", hint="give the model's state dict (torch.save(model.state_dict()))")
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise FormatError(f"{path}: entry {str(bad)[:80]!r} is not a named tensor",
                          hint="give the model's state dict (torch.save(model.state_dict()))")
    if any(k.startswith(("anchors.", "stitch_layers.")) for k in obj):
        raise InputError(f"{path} is already a stitched supernet (SN-Net keys), not a single anchor",
                         hint="use it directly with 'esta-export convert' or 'train'")
    return obj


# -- architecture from shapes (+ config) ----------------------------------------------------------
def _anchor_config(state: dict[str, torch.Tensor], config: dict, path: Path) -> tuple[AnchorConfig, str, list[str]]:
    for pattern, what, hint in VARIANTS:
        key = next((k for k in state if re.search(pattern, k)), None)
        if key is not None:
            raise FormatError(f"{path} is a ViT with {what} ({key}), which esta-export's anchors do not "
                              f"reproduce", hint=hint)
    args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    pool = config.get("global_pool", args.get("global_pool"))
    if pool not in (None, "", "token"):
        raise FormatError(f"{path}: global_pool is {str(pool)[:20]!r}; stitching needs cls-token pooling",
                          hint="use a cls-token ViT/DeiT checkpoint (global_pool='token')")

    def need(key: str, ndim: int) -> torch.Tensor:
        if key not in state:
            raise FormatError(f"{path} has no tensor {key}: it is not a timm ViT/DeiT state dict",
                              hint="give a ViT/DeiT/DeiT-3 checkpoint with a class token")
        t = state[key]
        if t.ndim != ndim or 0 in t.shape:
            raise FormatError(f"{path}: {key} has shape {tuple(t.shape)}", hint="the file is damaged")
        return t

    width = int(need("cls_token", 3).shape[-1])
    proj = need("patch_embed.proj.weight", 4)
    if proj.shape[0] != width or proj.shape[2] != proj.shape[3]:
        raise FormatError(f"{path}: patch_embed.proj.weight has shape {tuple(proj.shape)}, expected "
                          f"[{width}, C, P, P]", hint="use a square-patch ViT/DeiT checkpoint")
    patch, in_chans = int(proj.shape[2]), int(proj.shape[1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise FormatError(f"{path} has no contiguous blocks.<i> tensors", hint="give a ViT/DeiT state dict")
    layer_scale = "blocks.0.ls1.gamma" in state or "blocks.0.gamma_1" in state
    n_pos = int(need("pos_embed", 3).shape[1])
    if _square(n_pos) and not _square(n_pos - 1):
        embed_class, grid = False, n_pos
    elif _square(n_pos - 1):
        embed_class, grid = True, n_pos - 1
    else:
        raise FormatError(f"{path}: pos_embed has {n_pos} positions, not a square grid (with or without the "
                          f"cls slot)", hint="use a ViT/DeiT checkpoint at a square input size")
    if layer_scale == embed_class:
        what = "LayerScale with a cls position embedding" if layer_scale else \
            "position embeddings without a cls slot but no LayerScale"
        raise FormatError(f"{path}: {what} is a ViT variant esta-export's anchors do not have (they are DeiT: "
                          f"cls position, no LayerScale; or DeiT-3: no cls position, LayerScale)",
                          hint="use a DeiT or DeiT-3 checkpoint")
    if "head.weight" not in state:
        raise FormatError(f"{path} has no classification head (head.weight)",
                          hint="use a checkpoint with its classifier (num_classes > 0)")
    head = need("head.weight", 2)
    fc1 = need("blocks.0.mlp.fc1.weight", 2)
    heads, source, notes = _heads(width, config, args, path)
    side = math.isqrt(grid)
    cfg = AnchorConfig(
        name="anchor", embed_dim=width, depth=max(blocks) + 1, num_heads=heads,
        mlp_ratio=fc1.shape[0] / width, patch_size=patch, img_size=side * patch, in_chans=in_chans,
        num_classes=int(head.shape[0]), style="deit3" if layer_scale else "deit",
        qkv_bias="blocks.0.attn.qkv.bias" in state)
    return cfg, source, notes


def _heads(width: int, config: dict, args: dict, path: Path) -> tuple[int, str, list[str]]:
    h = args.get("num_heads")
    if isinstance(h, int) and not isinstance(h, bool) and h > 0:
        if width % h:
            raise FormatError(f"{path}: config num_heads {h} does not divide the width {width}",
                              hint="fix config.json or pass --num-heads")
        return h, "file", [f"heads {h} from config.json model_args"]
    arch = config.get("architecture")
    if isinstance(arch, str):
        for word, (w, heads) in SIZES.items():
            if re.search(rf"(^|_){word}(_|$)", arch) and w == width:
                return heads, "file", [f"heads {heads} from the architecture name {arch}"]
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads, "convention", [f"heads {heads} (DeiT convention width/64; override with --num-heads)"]


def _to_anchor_keys(state: dict[str, torch.Tensor], cfg: AnchorConfig, path: Path) -> dict[str, torch.Tensor]:
    """timm names -> esta-export anchor names; every key must map, every anchor key must be filled."""
    out = {}
    for k, v in state.items():
        k2 = re.sub(r"^blocks\.(\d+)\.ls([12])\.gamma$", r"blocks.\1.gamma_\2", k)
        out[k2] = v
    own = Anchor(cfg).state_dict()
    unexpected = [k for k in out if k not in own]
    if unexpected:
        raise FormatError(f"{path} has {len(unexpected)} tensor(s) a plain ViT/DeiT anchor does not (e.g. "
                          f"{unexpected[0]})", hint="use a plain ViT/DeiT/DeiT-3 checkpoint")
    missing = [k for k in own if k not in out]
    if missing:
        raise FormatError(f"{path} lacks {len(missing)} tensor(s) of a ViT/DeiT anchor (e.g. {missing[0]})",
                          hint="the file is truncated or not a ViT/DeiT state dict")
    for k, t in own.items():
        if tuple(out[k].shape) != tuple(t.shape):
            raise FormatError(f"{path}: {k} has shape {tuple(out[k].shape)}, a ViT of width {cfg.embed_dim} "
                              f"needs {tuple(t.shape)}", hint="the file is damaged or not a ViT/DeiT state dict")
        if not out[k].is_floating_point():
            raise FormatError(f"{path}: {k} has dtype {out[k].dtype}", hint="give float weights")
        if not bool(torch.isfinite(out[k]).all()):
            raise FormatError(f"{path}: {k} holds NaN or Inf values", hint="use an earlier checkpoint")
        out[k] = out[k].to(torch.float32)
    return out


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _opt_str(v: Any) -> str | None:
    return v[:200] if isinstance(v, str) else None


def _floats(v: Any, n: int, positive: bool = False) -> tuple[float, ...] | None:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        return None
    if positive and min(v) <= 0:
        return None
    return tuple(float(x) for x in v)


def _labels(v: Any, n: int) -> tuple[str, ...] | None:
    if isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, str) and len(x) <= 256 for x in v):
        return tuple(v)
    return None
