"""The stitched supernet in PyTorch: anchors, stitch spaces, adaptation, file formats."""

from .anchors import Anchor, AnchorConfig
from .formats import LoadedSupernet, load_supernet, save_supernet
from .model import Supernet
from .spaces import Segment, Stitch, StitchSpace, build_space
from .spec import AdaptationSpec, InputSpec, LoraSpec, SupernetSpec

__all__ = ["Anchor", "AnchorConfig", "Supernet", "SupernetSpec", "AdaptationSpec", "InputSpec", "LoraSpec",
           "Segment", "Stitch", "StitchSpace", "build_space", "LoadedSupernet", "load_supernet", "save_supernet"]
