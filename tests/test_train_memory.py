"""Tensor accounting of training memory: counts what a step saves and keeps, and only observes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esta_export.train import TrainConfig, Trainer, prepare
from esta_export.train.memory import StepMemory, optimizer_state_bytes
from test_train_trainer import CFG, _data, _model

torch.set_num_threads(1)


def test_saved_activations_are_the_distinct_non_weight_storages_autograd_keeps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    meter = StepMemory(net)
    x = torch.randn(5, 8)
    with meter.step(tag="a"):
        h = torch.relu(net[0](x))
        net[2](h).sum().backward()
    opt.step()
    meter.observe(list(net.parameters()), opt)
    # Linear 1 saves its input x; ReLU saves its output h, which linear 2 saves too (one storage);
    # the weights Linear saves for the input gradient are weights, not activations.
    assert meter.activations == x.nbytes + h.nbytes
    assert meter.activations_at == "a"
    n = sum(p.nbytes for p in net.parameters())
    assert meter.grads == n
    assert meter.optimizer == optimizer_state_bytes(opt) == 2 * n + 4 * len(list(net.parameters()))
    assert meter.trainable_bytes == n and meter.frozen_bytes == 0
    # A frozen first layer: no input to keep for it, its weights count as frozen.
    for p in net[0].parameters():
        p.requires_grad_(False)
    meter2 = StepMemory(net)
    with meter2.step():
        h = torch.relu(net[0](x))
        net[2](h).sum().backward()
    assert meter2.activations == h.nbytes
    assert meter2.frozen_bytes == sum(p.nbytes for p in net[0].parameters())


def test_metered_esta_steps_train_bit_identically_to_unmetered_ones():
    data = _data()
    cfg = TrainConfig(**CFG)
    runs = []
    for metered in (False, True):
        model, _ = prepare(_model(), data, cfg)
        tr = Trainer(model, cfg)
        meter = StepMemory(model)
        losses = []
        for k, sid in enumerate(model.space.ids[:6]):
            x, y = data.x_train[8 * k:8 * k + 8], data.y_train[8 * k:8 * k + 8]
            if metered:
                with meter.step(tag=sid):
                    losses.append(tr.step(x, y, sid))
                meter.observe(tr.groups.all, tr.optimizer)
            else:
                losses.append(tr.step(x, y, sid))
        runs.append((losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, meter))
    (l0, s0, _), (l1, s1, meter) = runs
    assert l0 == l1
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert meter.steps == 6 and meter.activations > 0 and meter.activations_at in model.space.ids[:6]
    assert 0 < meter.grads <= meter.trainable_bytes < meter.frozen_bytes
    assert meter.optimizer > meter.grads                      # two Adam moments per trained tensor
