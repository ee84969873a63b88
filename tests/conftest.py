"""Shared fixtures: tiny supernet families built in the test (a few hundred KB)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def tiny_anchors(style: str = "deit", depths=(4, 4, 4), widths=(32, 48, 64), img: int = 32, patch: int = 8,
                 classes: int = 10):
    from esta_export.supernet import AnchorConfig
    names = ("Ti", "S", "B", "L")
    return tuple(AnchorConfig(names[i], w, d, max(1, w // 16), img_size=img, patch_size=patch,
                              num_classes=classes, style=style) for i, (w, d) in enumerate(zip(widths, depths)))


def perturbed(model, scale: float = 0.05, seed: int = 0):
    """Random non-trivial weights everywhere (LoRA B and per-stitch biases included)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


@pytest.fixture
def v1_supernet():
    from esta_export.supernet import Supernet, SupernetSpec
    return perturbed(Supernet(SupernetSpec(tiny_anchors(), "snnet_v1")))


@pytest.fixture
def esta_supernet():
    from esta_export.supernet import AdaptationSpec, LoraSpec, Supernet, SupernetSpec
    spec = SupernetSpec(tiny_anchors(), "snnet_v1",
                        adaptation=AdaptationSpec(lora=LoraSpec(4, 8.0), stitch_lora=LoraSpec(4, 4.0, ()),
                                                  stitch_bias=True))
    return perturbed(Supernet(spec))


@pytest.fixture
def v2_supernet():
    from esta_export.supernet import AdaptationSpec, LoraSpec, Supernet, SupernetSpec
    anchors = tiny_anchors("deit3", depths=(4, 8), widths=(32, 64))
    spec = SupernetSpec(anchors, "snnet_v2", adaptation=AdaptationSpec(stitch_lora=LoraSpec(8, 1.0, ())))
    return perturbed(Supernet(spec))
