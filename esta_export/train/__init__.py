"""ESTA adaptation: train a stitched supernet on a task (shared LoRA, per-stitch biases, importance sampling).

``train_supernet(model, load_data(...), TrainConfig(...), out=...)`` is what ``esta-export train``
runs; ``pretrain`` builds small anchors from scratch (used by the demo).
"""

from .data import DataSplits, from_arrays, load_data
from .importance import ImportanceSampler, snip_score
from .init import init_stitching_layers, least_squares
from .trainer import TrainConfig, Trainer, TrainResult, evaluate_stitches, prepare, train_supernet

__all__ = ["DataSplits", "from_arrays", "load_data", "ImportanceSampler", "snip_score", "init_stitching_layers",
           "least_squares", "TrainConfig", "Trainer", "TrainResult", "evaluate_stitches", "prepare",
           "train_supernet"]
