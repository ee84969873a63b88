"""The ESTA loop: shared LoRA, exact per-stitch bias independence, recorded statistics, loss, resume, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import perturbed, tiny_anchors
from esta_export.cli import main as cli_main
from esta_export.supernet import Supernet, SupernetSpec, load_supernet, save_supernet
from esta_export.supernet.spec import ANCHOR_LINEARS
from esta_export.train import TrainConfig, Trainer, from_arrays, prepare, train_supernet
from esta_export.train import trainer as trainer_mod

torch.set_num_threads(1)          # tiny models: one thread is fastest and bit-reproducible


def _anchors():
    return tiny_anchors(depths=(2, 2, 2), widths=(16, 24, 32), img=16, patch=8, classes=10)


def _data(n=96, seed=0):
    """Learnable: the class (0..2) is the image quadrant that is bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 0.3, (n, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4] += 0.7
    return from_arrays(x, y, 16, labels=["tl", "tr", "bl"], val_split=0.25, seed=seed, name="quadrants")


def _model():
    torch.manual_seed(0)
    return perturbed(Supernet(SupernetSpec(_anchors(), "snnet_v1")), scale=0.1).train()


CFG = dict(epochs=2, batch_size=16, lr=3e-3, lora_rank=2, quiet=True, init_batch=32)


def test_lora_is_one_tensor_per_layer_shared_by_every_stitch():
    data = _data()
    model, _ = prepare(_model(), data, TrainConfig(**CFG))
    tr = Trainer(model, TrainConfig(**CFG))
    n_lin = sum(a.depth for a in model.spec.anchors) * 2                  # qkv + proj per block
    assert len(tr.groups.lora) == 2 * n_lin                                # A and B, not per stitch
    lora_b = model.anchors[0].blocks[0].attn.qkv.lora_B
    users = [s.id for s in model.space.stitches if s.first_anchor == 0]    # every route starting in anchor 0
    assert len(users) > 3
    for sid in users[:3]:
        tr.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x_train[:8], sid), data.y_train[:8]).backward()
        assert model.anchors[0].blocks[0].attn.qkv.lora_A.grad is not None   # the same tensor trains
    before = lora_b.detach().clone()
    tr.step(data.x_train[:8], data.y_train[:8], users[-1])
    assert not torch.equal(before, lora_b)           # one stitch's step moves what all of them use


def test_a_step_on_one_stitch_leaves_every_other_stitch_bias_row_bit_identical():
    data = _data()
    cfg = TrainConfig(**CFG)
    model, _ = prepare(_model(), data, cfg)
    tr = Trainer(model, cfg)
    a, b = model.space.ids[5], model.space.ids[9]
    ra, rb = model.space.index(a), model.space.index(b)
    x, y = data.x_train[:16], data.y_train[:16]
    start = [t.detach().clone() for t in tr.groups.tables]
    tr.step(x, y, a)
    tr.step(x, y, a)                                  # stitch A now has Adam momentum in its rows
    after_a = [t.detach().clone() for t in tr.groups.tables]
    assert any(not torch.equal(s[ra], t[ra]) for s, t in zip(start, after_a))
    tr.step(x, y, b)
    for old, t in zip(after_a, tr.groups.tables):
        others = torch.ones(len(t), dtype=torch.bool)
        others[rb] = False
        assert torch.equal(old[others], t.detach()[others])       # A's rows did not drift from momentum
    assert any(not torch.equal(o[rb], t[rb]) for o, t in zip(after_a, tr.groups.tables))
    # Tables cover every biased linear of the anchors and the stitching layers.
    assert len(tr.groups.tables) == sum(a.depth for a in model.spec.anchors) * len(ANCHOR_LINEARS) \
        + len(model.stitch_linears())


@torch.no_grad()
def _mean_loss(model, data):
    model.eval()
    return float(np.mean([float(F.cross_entropy(model(data.x_train, s), data.y_train)) for s in model.space.ids]))


def test_short_run_lowers_loss_and_records_statistics_that_round_trip(tmp_path):
    data = _data()
    model = _model()
    out = tmp_path / "trained.safetensors"
    prepared, _ = prepare(_model(), data, TrainConfig(**CFG))
    loss0 = _mean_loss(prepared, data)
    res = train_supernet(model, data, TrainConfig(**{**CFG, "epochs": 10, "lr": 1e-2}), out=out)
    loss1 = _mean_loss(res.model, data)
    assert loss1 < 0.9 * loss0, (loss0, loss1)
    assert np.mean(res.losses[-10:]) < 0.9 * np.mean(res.losses[:10])
    t = res.training
    assert t["dataset"] == {"name": "quadrants", "source": "arrays", "num_classes": 3, "train_size": 72,
                            "val_size": 24}
    assert set(t["accuracy"]) == set(t["importance"]) == {str(i) for i in res.model.space.ids}
    assert all(0.0 <= v <= 1.0 for v in t["accuracy"].values()) and max(t["importance"].values()) == 1.0
    assert 0 < t["trainable_params"] < t["total_params"]
    loaded = load_supernet(out)
    assert loaded.spec.training == t
    assert loaded.spec.input.labels == ("tl", "tr", "bl") and loaded.spec.anchors[0].num_classes == 3
    assert loaded.spec.adaptation.stitch_bias and loaded.spec.adaptation.lora.rank == 2
    with torch.no_grad():
        assert torch.equal(loaded.model(data.x_val, 7), res.model.eval()(data.x_val, 7))
    from esta_export.inspect import describe
    rows = describe(loaded)["stitches"]
    assert rows[0]["accuracy"] == t["accuracy"]["0"] and rows[0]["importance"] == t["importance"]["0"]


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, monkeypatch):
    data = _data()
    cfg = TrainConfig(**{**CFG, "epochs": 3})
    full = train_supernet(_model(), data, cfg, checkpoint=tmp_path / "full.ckpt")

    real = trainer_mod.save_checkpoint

    def crash_after_first_epoch(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(_model(), data, cfg, checkpoint=tmp_path / "ck")
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real)
    resumed = train_supernet(_model(), data, cfg, resume=tmp_path / "ck", checkpoint=tmp_path / "ck")
    assert resumed.losses == full.losses
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.training["accuracy"] == full.training["accuracy"]
    with pytest.raises(Exception, match="other settings"):
        train_supernet(_model(), data, TrainConfig(**{**CFG, "epochs": 4}), resume=tmp_path / "ck")


def test_cli_trains_an_npz_and_reports_bad_input_in_one_line(tmp_path, capsys):
    src = tmp_path / "base.safetensors"
    save_supernet(_model(), src)
    d = _data()
    x = (d.x_train[:, 0].numpy() * 40 + 100).clip(0, 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=d.y_train.numpy())
    out = tmp_path / "out.safetensors"
    rc = cli_main(["train", str(src), "--data", str(tmp_path / "d.npz"), "--out", str(out), "--epochs", "1",
                   "--batch-size", "16", "--lora-rank", "2", "--threads", "1", "-q"])
    assert rc == 0 and out.is_file() and (tmp_path / "out.safetensors.ckpt" / "state.json").is_file()
    assert load_supernet(out).spec.training["dataset"]["name"] == "d"
    capsys.readouterr()
    assert cli_main(["train", str(src), "--data", str(tmp_path / "nope"), "--out", str(out), "-q"]) == 2
    assert cli_main(["train", str(src), "--data", str(tmp_path / "d.npz"), "--out", str(out),
                     "--lora-targets", "attn.q", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not found" in err[0] and "LoRA target" in err[1]


def test_trained_parameter_count_counts_only_rows_that_get_gradients(esta_supernet):
    """A stitch's table rows of blocks it skips never receive a gradient: the count leaves them out,
    and it equals the entries a full pass over every stitch actually touches."""
    from esta_export.train.adapt import trained_param_count, trainable_groups
    model = esta_supernet
    groups = trainable_groups(model)
    touched = {id(p): torch.zeros_like(p, dtype=torch.bool) for p in groups.all}
    x = torch.randn(2, 3, 32, 32)
    for sid in model.space.ids:
        model.zero_grad(set_to_none=True)
        model(x, sid).sum().backward()
        for p in groups.all:
            if p.grad is not None:
                touched[id(p)] |= p.grad != 0
    # Shared tensors count whole; for tables, only rows (stitch, layer) that got a gradient.
    tables = {id(t) for t in groups.tables}
    expected = sum(p.numel() for p in groups.all if id(p) not in tables) + \
        sum(int(touched[id(t)].any(dim=1).sum()) * t.shape[1] for t in groups.tables)
    assert trained_param_count(model, groups) == expected < sum(p.numel() for p in groups.all)
