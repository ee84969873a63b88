"""A tiny export directory for compile tests: two small ViT-like graphs and their export.json.

Stands in for the real exporter's output (docs/stages.md): input ``pixels`` [batch, 3, 32, 32]
float32 with a dynamic batch, output ``logits`` [batch, 10]. The graphs contain LayerNorm, GELU,
MatMul and a Conv patch embedding, the op mix that decides how backends compile a ViT.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

IMAGE = 32
CLASSES = 10


def _module(depth: int, seed: int):
    import torch

    class Block(torch.nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(d)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(),
                                           torch.nn.Linear(2 * d, d))

        def forward(self, t):
            return t + self.mlp(self.norm(t))

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 32, 8, 8)
            self.blocks = torch.nn.Sequential(*[Block(32) for _ in range(depth)])
            self.head = torch.nn.Linear(32, CLASSES)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.head(self.blocks(t).mean(1))

    torch.manual_seed(seed)
    m = Tiny().eval()
    with torch.no_grad():  # spread the logits so top-1 is not a coin toss between near-ties
        m.head.weight.mul_(4.0)
    return m


def export_onnx(path: Path, depth: int = 2, seed: int = 0, opset: int = 17) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_module(depth, seed), (torch.randn(1, 3, IMAGE, IMAGE),), str(path),
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return path


def make_export(root: Path, depths: tuple[int, ...] = (1, 2), opset: int = 17,
                layernorm: str = "op") -> Path:
    """Write ``root/export.json`` and one graph per depth; returns ``root``."""
    root = Path(root)
    stitches = []
    for i, depth in enumerate(depths):
        rel = f"stitches/stitch_{i:03d}.onnx"
        export_onnx(root / rel, depth=depth, seed=i, opset=opset)
        stitches.append({"id": i, "route": f"T[0-{depth - 1}]", "onnx": rel,
                         "segments": [[0, 0, depth - 1]], "flops": 1000 * (i + 1),
                         "params": 100 * (i + 1), "slice_max_abs_error": 0.0,
                         "max_abs_error": 0.0, "accuracy": None, "accuracy_source": None,
                         "importance": None})
    spec = {
        "schema": "esta-export/export", "schema_version": "1.0", "tool_version": "0.1.0",
        "supernet": {"path": "tiny", "sha256": "0" * 64, "space": "snnet_v1",
                     "source_format": "native"},
        "input": {"name": "pixels", "shape": ["batch", 3, IMAGE, IMAGE], "dtype": "float32",
                  "layout": "NCHW", "image_size": IMAGE, "mean": [0.5] * 3, "std": [0.5] * 3,
                  "labels": None},
        "output": {"name": "logits", "num_classes": CLASSES},
        "opset": opset, "layernorm": layernorm, "weights": None,
        "stitches": stitches, "failed": [],
        "anchors": [{"name": "T", "embed_dim": 32, "depth": max(depths), "num_heads": 1}],
    }
    (root / "export.json").write_text(json.dumps(spec, indent=2))
    return root


def calibration(n: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, IMAGE, IMAGE)).astype(np.float32)
