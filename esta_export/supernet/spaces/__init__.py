"""Stitch spaces: the rules that enumerate a supernet's stitches. One file per space.

Adding a space touches one file: subclass ``StitchSpace`` and decorate it with
``@register_space``; every module of this package is loaded (no list to keep).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Sequence

from ..anchors import AnchorConfig
from .base import Segment, Stitch, StitchSpace

SPACES: dict[str, type[StitchSpace]] = {}


def register_space(cls: type[StitchSpace]) -> type[StitchSpace]:
    SPACES[cls.name] = cls
    return cls


def _load() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def build_space(name: str, anchors: Sequence[AnchorConfig], params: dict | None = None) -> StitchSpace:
    _load()
    if name not in SPACES:
        raise KeyError(f"unknown stitch space {name!r}; known: {sorted(SPACES)}")
    return SPACES[name](anchors, **(params or {}))


def space_names() -> list[str]:
    _load()
    return sorted(SPACES)


__all__ = ["Segment", "Stitch", "StitchSpace", "SPACES", "register_space", "build_space", "space_names"]
