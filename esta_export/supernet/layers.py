"""Linear layers that carry the adaptations of a stitched supernet.

``AdaptedLinear`` is a plain ``nn.Linear`` (same ``weight``/``bias`` keys as timm and SN-Net) that can
also hold:

* a LoRA pair ``lora_A`` [r, in] and ``lora_B`` [out, r] with scale ``alpha / r`` (loralib's and
  SN-Netv2's key names and merge rule, ``W_eff = W + scale * B @ A``), and
* a per-stitch bias table ``stitch_bias`` [num_stitches, out] (ESTA: every stitch owns its
  biases). The row used is the supernet's active stitch, read from a shared ``StitchContext``.

The merged weight and the active bias are what a slice exports, so the deployed graph is a plain
Linear whatever adaptation the supernet was trained with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class StitchContext:
    """The active stitch's row in per-stitch tables. One object shared by every layer of a supernet."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index: int | None = None


class AdaptedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.lora_scale: float = 0.0
        self.stitch_bias: nn.Parameter | None = None
        # A plain attribute, not a submodule: the context is shared, not owned.
        self.__dict__["_ctx"] = None

    # -- configuration ---------------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float) -> None:
        """Attach a LoRA pair: A Kaiming-uniform, B zeros, so the initial delta is zero (loralib)."""
        if rank <= 0:
            raise ValueError("LoRA rank must be positive")
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_scale = alpha / rank

    def add_stitch_bias(self, num_stitches: int, ctx: StitchContext) -> None:
        """Give every stitch its own copy of the bias, starting from the shared one."""
        base = self.bias.detach() if self.bias is not None else torch.zeros(self.out_features)
        self.stitch_bias = nn.Parameter(base.unsqueeze(0).repeat(num_stitches, 1).clone())
        self.__dict__["_ctx"] = ctx

    def bind(self, ctx: StitchContext) -> None:
        self.__dict__["_ctx"] = ctx

    # -- what a slice exports --------------------------------------------------------------------
    def merged_weight(self) -> torch.Tensor:
        w = self.weight
        if self.lora_A is not None and self.lora_B is not None:
            w = w + self.lora_scale * (self.lora_B @ self.lora_A)
        return w

    def active_bias(self, stitch_index: int | None = None) -> torch.Tensor | None:
        if self.stitch_bias is not None:
            idx = stitch_index if stitch_index is not None else self._active_index()
            return self.stitch_bias[idx]
        return self.bias

    def _active_index(self) -> int:
        ctx = self.__dict__["_ctx"]
        if ctx is None or ctx.index is None:
            raise RuntimeError("per-stitch bias used outside a supernet forward with a stitch id")
        return ctx.index

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.active_bias())
        if self.lora_A is not None and self.lora_B is not None:
            # Unmerged LoRA branch, as loralib computes it in train mode (SN-Netv2 L205-300).
            out = out + self.lora_scale * F.linear(F.linear(x, self.lora_A), self.lora_B)
        return out

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.lora_A is not None:
            extra += f", lora_rank={self.lora_A.shape[0]}, lora_scale={self.lora_scale:g}"
        if self.stitch_bias is not None:
            extra += f", stitch_bias={tuple(self.stitch_bias.shape)}"
        return extra
