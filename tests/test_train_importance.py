"""Importance scores and the stitch sampler they drive."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esta_export.train.importance import ImportanceSampler, snip_score


def test_higher_score_is_drawn_more_often_and_nobody_falls_below_the_floor():
    ids = [0, 1, 2, 3, 10]
    s = ImportanceSampler(ids, floor=0.3, momentum=0.5, seed=0)
    for sid, score in zip(ids, [1.0, 1.0, 1.0, 1.0, 20.0]):
        s.update(sid, score)
    p = s.probabilities()
    assert abs(p.sum() - 1) < 1e-12 and p.min() >= 0.3 / len(ids) - 1e-12
    draws = [s.sample() for _ in range(4000)]
    counts = {i: draws.count(i) for i in ids}
    assert counts[10] > 3 * max(counts[i] for i in ids if i != 10)
    assert min(counts.values()) > 0.5 * 0.3 / len(ids) * 4000     # every stitch still trained
    assert s.importance()["10"] == 1.0 and s.importance()["0"] == pytest.approx(1 / 20)


def test_moving_average_and_unseen_stitches_get_the_mean():
    s = ImportanceSampler([5, 6, 7], floor=0.0, momentum=0.9)
    s.update(5, 10.0)
    s.update(5, 0.0)
    s.update(6, 2.0)
    assert s.estimates().tolist() == pytest.approx([9.0, 2.0, 5.5])
    assert ImportanceSampler([1, 2]).probabilities().tolist() == [0.5, 0.5]


def test_state_round_trips_through_json_and_continues_the_same_draws():
    a = ImportanceSampler(list(range(6)), seed=3)
    for i in range(6):
        a.update(i, float(i + 1))
    [a.sample() for _ in range(7)]
    b = ImportanceSampler(list(range(6)))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.sample() for _ in range(20)] == [b.sample() for _ in range(20)]
    assert np.array_equal(a.draws, b.draws)


def test_snip_score_sums_grad_times_param_over_params_with_gradients():
    p, q = torch.nn.Parameter(torch.tensor([2.0, -3.0])), torch.nn.Parameter(torch.tensor([5.0]))
    (p * torch.tensor([1.0, 2.0])).sum().backward()
    assert snip_score([p, q]) == pytest.approx(2.0 + 6.0)          # q has no gradient: not counted


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ImportanceSampler([1], floor=1.5)
    with pytest.raises(ValueError):
        ImportanceSampler([1], momentum=1.0)
