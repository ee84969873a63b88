"""Latency of unprofiled stitches from profiled ones.

Why an additive model works here: a stitch runs whole transformer blocks of its anchors, one
stitching layer per anchor change, the embedding of its first anchor and the head (final norm +
classifier) of its last. Blocks of one anchor all cost the same (same width, same token count), so
a stitch's latency is close to

    latency = sum_a blocks(a) * c_block[a] + sum_(a,b) layers(a->b) * c_layer[a,b]
              + c_embed[first anchor] + c_head[last anchor]

(OFA and HAT build latency tables the same way, per layer). Costs are fitted with non-negative
least squares on relative error (every stitch counts alike in percent, fast or slow), from a subset
chosen to pin every coefficient (greedy D-optimal design, pure anchors first). Stitches without
segments fall back to ``latency = c0 + c1 * FLOPs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from scipy.optimize import nnls as _scipy_nnls

Stitch = Mapping[str, Any]  # {"id", "segments": [[anchor, first, last], ...], "flops", ...}


def stitch_features(stitch: Stitch) -> dict[str, float]:
    """Counts per anchor's blocks, per stitching layer (a->b), embedding and head anchor."""
    segs = stitch.get("segments")
    if not segs:
        return {}
    f: dict[str, float] = {}
    for a, first, last in segs:
        key = f"blocks[{a}]"
        f[key] = f.get(key, 0.0) + (int(last) - int(first) + 1)
    for (a, _, _), (b, _, _) in zip(segs, segs[1:]):
        key = f"layer[{a}->{b}]"
        f[key] = f.get(key, 0.0) + 1.0
    f[f"embed[{segs[0][0]}]"] = 1.0
    f[f"head[{segs[-1][0]}]"] = 1.0
    return f


def _flops_features(stitch: Stitch) -> dict[str, float]:
    return {"const": 1.0, "gflops": float(stitch.get("flops") or 0.0) / 1e9}


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Lawson-Hanson NNLS (scipy, a declared dependency): one predictor everywhere, the one the
    # benchmarks measured.
    return _scipy_nnls(a, b, maxiter=50 * a.shape[1] + 100)[0]


@dataclass
class LatencyModel:
    """Fitted per-component costs (milliseconds) of one artifact family on one device."""

    kind: str                       # "segments" | "flops"
    columns: list[str]
    coef: np.ndarray
    trained_on: list[Hashable] = field(default_factory=list)

    @staticmethod
    def kind_for(stitches: Sequence[Stitch]) -> str:
        return "segments" if stitches and all(s.get("segments") for s in stitches) else "flops"

    @classmethod
    def fit(cls, stitches: Sequence[Stitch], latency_ms: Sequence[float],
            kind: str | None = None) -> "LatencyModel":
        if len(stitches) == 0:
            raise ValueError("cannot fit a latency model on no stitches")
        kind = kind or cls.kind_for(stitches)
        feats = [_features(s, kind) for s in stitches]
        columns = sorted({k for f in feats for k in f})
        a = np.array([[f.get(c, 0.0) for c in columns] for f in feats])
        y = np.asarray(latency_ms, dtype=np.float64)
        # Relative weighting: minimise sum((pred - y) / y)^2, the error users read in percent.
        w = 1.0 / np.maximum(y, 1e-9)
        coef = _nnls(a * w[:, None], y * w)
        return cls(kind, columns, coef, [s.get("id") for s in stitches])

    def covers(self, stitch: Stitch) -> bool:
        """False when the stitch uses a component no profiled stitch had (an extrapolation)."""
        return set(_features(stitch, self.kind)) <= set(self.columns)

    def predict(self, stitches: Sequence[Stitch]) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.columns)}
        out = []
        for s in stitches:
            f = _features(s, self.kind)
            out.append(sum(v * self.coef[idx[k]] for k, v in f.items() if k in idx))
        return np.asarray(out, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "costs_ms": dict(zip(self.columns, map(float, self.coef))),
                "trained_on": list(self.trained_on)}


def _features(stitch: Stitch, kind: str) -> dict[str, float]:
    return stitch_features(stitch) if kind == "segments" else _flops_features(stitch)


# ---------------------------------------------------------------- which stitches to time


def choose_profile_subset(stitches: Sequence[Stitch], budget: int,
                          already: Sequence[Hashable] = ()) -> list[Hashable]:
    """Up to ``budget`` stitch ids to time (besides ``already`` timed ones), chosen so the fit is
    well posed: pure anchors first (they pin block, embed and head costs), then greedily the stitch
    that adds most information (largest gain in log det of the ridge-regularised Gram matrix,
    which also spreads picks across components and FLOPs); ties go to the FLOPs farthest from
    what is already chosen."""
    if budget <= 0:
        return []
    kind = LatencyModel.kind_for(stitches)
    feats = [_features(s, kind) for s in stitches]
    columns = sorted({k for f in feats for k in f})
    x = np.array([[f.get(c, 0.0) for c in columns] for f in feats], dtype=np.float64)
    x /= np.maximum(np.abs(x).max(axis=0), 1e-12)  # scale-free design
    ids = [s.get("id") for s in stitches]
    flops = np.array([float(s.get("flops") or 0.0) for s in stitches])
    lf = np.log(np.maximum(flops, 1.0))
    chosen = [i for i, sid in enumerate(ids) if sid in set(already)]
    gram = 1e-3 * np.eye(len(columns)) + sum((np.outer(x[i], x[i]) for i in chosen),
                                             np.zeros((len(columns), len(columns))))
    picked: list[int] = []
    pure = [i for i, s in enumerate(stitches)
            if kind == "segments" and len(s["segments"]) == 1 and i not in chosen]
    for i in sorted(pure, key=lambda i: flops[i]):
        if len(picked) >= budget:
            break
        picked.append(i)
        gram += np.outer(x[i], x[i])
    while len(picked) < budget:
        rest = [i for i in range(len(ids)) if i not in picked and i not in chosen]
        if not rest:
            break
        inv = np.linalg.inv(gram)
        gain = np.array([np.log1p(x[i] @ inv @ x[i]) for i in rest])
        taken = chosen + picked
        spread = np.array([min((abs(lf[i] - lf[j]) for j in taken), default=0.0) for i in rest])
        # Information first; FLOPs spread breaks near-ties (1e-6 relative).
        score = gain + 1e-6 * (spread / (spread.max() + 1e-12)) * (gain.max() + 1e-12)
        best = rest[int(np.argmax(score))]
        picked.append(best)
        gram += np.outer(x[best], x[best])
    return [ids[i] for i in picked]


# ---------------------------------------------------------------- how good is it


@dataclass
class PredictionError:
    """Held-out error of the predictor: percent errors of stitches it did not see."""

    method: str
    n_train: int
    n_eval: int
    mape: float | None
    within_10: float | None
    max_ape: float | None
    errors: dict[Hashable, float] = field(default_factory=dict)  # id -> signed relative error

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n_train": self.n_train, "n_eval": self.n_eval,
                "mape": self.mape, "within_10pct": self.within_10, "max_ape": self.max_ape,
                "errors": {str(k): v for k, v in self.errors.items()}}


def _summarise(method: str, n_train: int, errors: dict[Hashable, float]) -> PredictionError:
    if not errors:
        return PredictionError(method, n_train, 0, None, None, None, {})
    ape = np.abs(np.array(list(errors.values())))
    return PredictionError(method, n_train, len(errors), float(ape.mean()),
                           float((ape <= 0.10).mean()), float(ape.max()), errors)


def leave_one_out(stitches: Sequence[Stitch], latency_ms: Sequence[float]) -> PredictionError:
    """Refit without each profiled stitch and predict it (only stitches the rest cover count)."""
    errors: dict[Hashable, float] = {}
    y = list(latency_ms)
    kind = LatencyModel.kind_for(stitches)
    for i, s in enumerate(stitches):
        rest = [t for j, t in enumerate(stitches) if j != i]
        if not rest:
            continue
        model = LatencyModel.fit(rest, [v for j, v in enumerate(y) if j != i], kind)
        if not model.covers(s):
            continue
        errors[s.get("id")] = float(model.predict([s])[0] / y[i] - 1.0)
    return _summarise("leave-one-out on the profiled stitches", len(stitches) - 1, errors)


def holdout_error(stitches: Sequence[Stitch], latency_ms: Mapping[Hashable, float], budget: int
                  ) -> tuple[PredictionError, LatencyModel, list[Hashable]]:
    """The benchmark figure: profile ``budget`` stitches chosen by :func:`choose_profile_subset`,
    predict all others and compare with their measured latency."""
    subset = choose_profile_subset(stitches, budget)
    chosen = set(subset)
    train = [s for s in stitches if s.get("id") in chosen]
    model = LatencyModel.fit(train, [latency_ms[s.get("id")] for s in train])
    held = [s for s in stitches if s.get("id") not in chosen]
    pred = model.predict(held) if held else np.array([])
    errors = {s.get("id"): float(p / latency_ms[s.get("id")] - 1.0) for s, p in zip(held, pred)}
    return _summarise(f"held out: {len(train)} profiled, {len(held)} predicted",
                      len(train), errors), model, subset
