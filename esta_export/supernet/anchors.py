"""Anchors: ViT/DeiT and DeiT-3 models with timm's (and Meta DeiT-3's) state-dict key names.

Key names match what SN-Net and SN-Netv2 checkpoints hold under ``anchors.<a>.``:
``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}.*``, ``norm.*``, ``head.*``; DeiT-3 adds ``blocks.<i>.gamma_1/gamma_2`` and adds
the position embedding to the patch tokens *before* the cls token is prepended.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AdaptedLinear

STYLES = ("deit", "deit3")


@dataclass(frozen=True)
class AnchorConfig:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    style: str = "deit"          # "deit": cls then pos [1,N+1,D]; "deit3": pos [1,N,D] then cls, LayerScale
    qkv_bias: bool = True
    ln_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_json(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = AdaptedLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = AdaptedLinear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # Same maths as timm 0.6.12's explicit (q * scale) @ k^T -> softmax -> @ v.
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = AdaptedLinear(dim, hidden)
        self.fc2 = AdaptedLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: AnchorConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mlp = Mlp(d, cfg.mlp_hidden)
        if cfg.style == "deit3":
            # Meta DeiT-3 names (timm renames them ls1.gamma/ls2.gamma); 1e-6 init as in deit.py.
            self.gamma_1 = nn.Parameter(torch.full((d,), 1e-6))
            self.gamma_2 = nn.Parameter(torch.full((d,), 1e-6))
        else:
            self.gamma_1 = None
            self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.gamma_2 is None else self.gamma_2 * m)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: AnchorConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def embed_tokens(x: torch.Tensor, patch_embed: nn.Module, cls_token: torch.Tensor,
                 pos_embed: torch.Tensor, style: str) -> torch.Tensor:
    """Patch embedding + cls token + position embedding, in the anchor's own convention."""
    x = patch_embed(x)
    cls = cls_token.expand(x.shape[0], -1, -1)
    if style == "deit3":
        return torch.cat((cls, x + pos_embed), dim=1)
    return torch.cat((cls, x), dim=1) + pos_embed


class Anchor(nn.Module):
    """One pretrained model of the family. Parameters sit at timm's key names."""

    def __init__(self, cfg: AnchorConfig) -> None:
        super().__init__()
        if cfg.style not in STYLES:
            raise ValueError(f"unknown anchor style {cfg.style!r}; known: {STYLES}")
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        n_pos = cfg.num_patches if cfg.style == "deit3" else cfg.num_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.head = AdaptedLinear(d, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_embed(self, x: torch.Tensor) -> torch.Tensor:
        return embed_tokens(x, self.patch_embed, self.cls_token, self.pos_embed, self.cfg.style)

    def forward_tail(self, x: torch.Tensor, final_norm: bool) -> torch.Tensor:
        # Pool = cls token. LayerNorm is per token, so norm(x)[:, 0] == norm(x[:, 0]).
        x = x[:, 0]
        if final_norm:
            x = self.norm(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.forward_tail(x, final_norm=True)
