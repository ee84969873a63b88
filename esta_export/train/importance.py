"""Stitch importance from training-time gradients, and the sampler it drives (ESTA, STITCHING.md 7).

Score of a step (SNIP-like): sum of |gradient x parameter| over the parameters the trained stitch
owns or uses: its rows of the per-stitch bias tables, the shared LoRA tensors of the blocks it runs,
and its stitching layers. Scores are kept per stitch as an exponential moving average. Sampling
probabilities mix the normalised scores with a uniform floor, ``p = (1 - floor) * s / sum(s) +
floor / n``, so every stitch keeps at least ``floor / n`` of the draws and none starves.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch


def snip_score(params: Iterable[torch.Tensor]) -> float:
    """Sum of |grad x param| over ``params`` that received a gradient this step.

    Per-stitch tables receive a gradient only in the active stitch's row, so summing the whole
    table counts exactly that row.
    """
    total = 0.0
    for p in params:
        if p.grad is not None:
            total += float((p.grad.detach() * p.detach()).abs().sum())
    return total


class ImportanceSampler:
    """Per-stitch moving-average scores and importance-weighted stitch draws (seeded, resumable)."""

    def __init__(self, ids: Sequence[int], floor: float = 0.3, momentum: float = 0.9, seed: int = 0) -> None:
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.ids = list(ids)
        self.floor = float(floor)
        self.momentum = float(momentum)
        self.scores = np.zeros(len(self.ids))
        self.seen = np.zeros(len(self.ids), dtype=bool)
        self.draws = np.zeros(len(self.ids), dtype=np.int64)
        self._row = {sid: i for i, sid in enumerate(self.ids)}
        self.rng = np.random.default_rng(seed)

    def update(self, stitch_id: int, score: float) -> None:
        i = self._row[stitch_id]
        if not np.isfinite(score):
            return
        # First observation sets the average, later ones move it (no bias towards the zero start).
        self.scores[i] = score if not self.seen[i] else self.momentum * self.scores[i] + (1 - self.momentum) * score
        self.seen[i] = True

    def estimates(self) -> np.ndarray:
        """Scores, with never-observed stitches given the mean of the observed ones (or all equal)."""
        if not self.seen.any():
            return np.ones(len(self.ids))
        s = self.scores.copy()
        s[~self.seen] = s[self.seen].mean()
        return s

    def probabilities(self) -> np.ndarray:
        n = len(self.ids)
        s = self.estimates()
        total = s.sum()
        weighted = s / total if total > 0 else np.full(n, 1.0 / n)
        return (1.0 - self.floor) * weighted + self.floor / n

    def sample(self) -> int:
        i = int(self.rng.choice(len(self.ids), p=self.probabilities()))
        self.draws[i] += 1
        return self.ids[i]

    def importance(self) -> dict[str, float]:
        """Final importance per stitch id, scaled so the most important stitch has 1.0."""
        s = self.estimates()
        top = s.max() if s.max() > 0 else 1.0
        return {str(sid): float(v / top) for sid, v in zip(self.ids, s)}

    # -- resumable state (JSON-safe: numbers and lists only) ------------------------------------------
    def state_dict(self) -> dict:
        return {"ids": self.ids, "floor": self.floor, "momentum": self.momentum,
                "scores": self.scores.tolist(), "seen": self.seen.tolist(), "draws": self.draws.tolist(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if list(state["ids"]) != self.ids:
            raise ValueError("the checkpoint's stitch ids differ from this supernet's")
        self.floor, self.momentum = float(state["floor"]), float(state["momentum"])
        self.scores = np.asarray(state["scores"], dtype=float)
        self.seen = np.asarray(state["seen"], dtype=bool)
        self.draws = np.asarray(state["draws"], dtype=np.int64)
        self.rng.bit_generator.state = state["rng"]
