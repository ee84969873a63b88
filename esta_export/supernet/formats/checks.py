"""Checks shared by every reader: strict key/shape matching, finite weights, head overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ...errors import FormatError, InputError, ShapeError
from ..model import Supernet
from ..spec import SupernetSpec


def load_strict(model: Supernet, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise FormatError(f"{path}: tensors do not match the architecture its spec describes: "
                          + ", ".join(parts), hint="the file is damaged or from another architecture")
    for k, t in own.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise ShapeError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, the architecture "
                             f"needs {tuple(t.shape)}", hint="the file is damaged or from another architecture")
        if not state[k].is_floating_point():
            raise FormatError(f"{path}: tensor {k} has dtype {state[k].dtype}, a float type is needed",
                              hint="the file is damaged or from another architecture")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FormatError(f"{path}: tensor {k} holds NaN or Inf values",
                              hint="the training diverged or the file is damaged; use an earlier checkpoint")


def parse_num_heads(text: str | None) -> list[int] | None:
    """Parse the CLI's ``--num-heads 3,6,12``."""
    if text is None:
        return None
    try:
        heads = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--num-heads must be comma-separated integers such as 3,6,12, got {text!r}") from None
    if not heads or any(h <= 0 for h in heads):
        raise InputError(f"--num-heads must be positive integers such as 3,6,12, got {text!r}")
    return heads


def apply_num_heads(spec: SupernetSpec, num_heads: Sequence[int]) -> tuple[SupernetSpec, str]:
    if len(num_heads) != len(spec.anchors):
        raise InputError(f"--num-heads gives {len(num_heads)} values but the supernet has "
                         f"{len(spec.anchors)} anchors", hint="give one head count per anchor, e.g. 3,6,12")
    anchors = []
    for a, h in zip(spec.anchors, num_heads):
        if a.embed_dim % h:
            raise InputError(f"--num-heads {h} does not divide anchor {a.name}'s width {a.embed_dim}",
                             hint="give head counts that divide each anchor's width")
        anchors.append(type(a)(**{**a.to_json(), "num_heads": h}))
    spec = spec.replace(anchors=tuple(anchors), num_heads_source="user")
    return spec, "heads " + ",".join(map(str, num_heads)) + " (from --num-heads)"
