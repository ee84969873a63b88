"""What every stitch space produces: stitches (routes through the anchors) and stitching layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..anchors import AnchorConfig


@dataclass(frozen=True)
class Segment:
    """A contiguous run of one anchor's blocks, ``first`` to ``last`` inclusive."""

    anchor: int
    first: int
    last: int

    @property
    def num_blocks(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Stitch:
    """One route through the anchors.

    ``layers[i]`` is the key ``(group, index)`` of the stitching layer applied between
    ``segments[i]`` and ``segments[i + 1]``; ``final_norm`` says whether the last anchor's final
    LayerNorm runs (SN-Net v1 skips it on stitched paths).
    """

    id: int
    segments: tuple[Segment, ...]
    layers: tuple[tuple[int, int], ...]
    final_norm: bool

    @property
    def is_anchor(self) -> bool:
        return len(self.segments) == 1

    @property
    def first_anchor(self) -> int:
        return self.segments[0].anchor

    @property
    def last_anchor(self) -> int:
        return self.segments[-1].anchor

    @property
    def depth(self) -> int:
        return sum(s.num_blocks for s in self.segments)

    def route(self, names: Sequence[str]) -> str:
        """Readable route, e.g. ``Ti[0-7]>S[7-11]``; a pure anchor is just ``S``."""
        if self.is_anchor:
            return names[self.segments[0].anchor]
        return ">".join(f"{names[s.anchor]}[{s.first}-{s.last}]" for s in self.segments)


class StitchSpace:
    """Base class. Subclasses enumerate stitches in the original implementation's id order."""

    name: str = ""
    #: parameters a user may set, with their defaults (stored in the supernet spec)
    defaults: dict = {}

    def __init__(self, anchors: Sequence[AnchorConfig], **params) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown parameters for stitch space {self.name}: {sorted(unknown)}")
        self.anchors = list(anchors)
        self.params = {**self.defaults, **params}
        self.check_anchors()
        self._stitches = self.enumerate()
        self._by_id = {s.id: s for s in self._stitches}

    @classmethod
    def example_anchors(cls) -> tuple[AnchorConfig, ...]:
        """Tiny anchors this space accepts: the contract tests build every registered space from
        them (override when the default three equal-depth DeiT anchors do not fit)."""
        return tuple(AnchorConfig(n, w, 4, max(1, w // 16), img_size=32, patch_size=8, num_classes=10)
                     for n, w in (("Ti", 32), ("S", 48), ("B", 64)))

    # -- to implement ----------------------------------------------------------------------------
    def check_anchors(self) -> None:
        """Raise ValueError when the anchors cannot form this space."""

    def enumerate(self) -> list[Stitch]:
        raise NotImplementedError

    def layer_shapes(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Every stitching layer the checkpoint holds: key -> (in_features, out_features)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    @property
    def stitches(self) -> list[Stitch]:
        return list(self._stitches)

    @property
    def ids(self) -> list[int]:
        return [s.id for s in self._stitches]

    def __len__(self) -> int:
        return len(self._stitches)

    def get(self, stitch_id: int) -> Stitch:
        return self._by_id[stitch_id]

    def index(self, stitch_id: int) -> int:
        """Row of ``stitch_id`` in per-stitch tables (its position in enumeration order)."""
        return self._index[stitch_id]

    @property
    def _index(self) -> dict[int, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {s.id: i for i, s in enumerate(self._stitches)}
            self.__dict__["_index_cache"] = cached
        return cached

    def spec(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}
