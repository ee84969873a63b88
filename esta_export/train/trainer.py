"""The ESTA training loop: one stitch per step, drawn by importance, anchors frozen.

Every step draws a stitch from the importance sampler, runs one batch through it, and updates the
shared LoRA, the stitching layers, the heads and that stitch's own rows of the per-stitch bias
tables. Adam keeps moment estimates for whole tables, so a row trained earlier would keep moving
from momentum while another stitch trains; after each step the rows of every other stitch are put
back bit for bit, which makes "training stitch A never moves stitch B's biases" exact. At the end
every stitch is evaluated on the held-out split and the accuracies, importance scores and the
dataset description go into the native file's metadata.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..progress import info, stage
from ..supernet.formats import save_supernet
from ..supernet.model import Supernet
from ..supernet.spec import LoraSpec
from .adapt import TrainableGroups, adapt_supernet, trainable_groups
from .checkpoint import checkpoint_folder, load_optimizer, read_state, save_checkpoint
from .data import DataSplits
from .importance import ImportanceSampler, snip_score
from .init import init_stitching_layers


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    lora_rank: int = 8
    lora_alpha: float | None = None              # default: the rank (LoRA scale 1)
    lora_targets: tuple[str, ...] = ("attn.qkv", "attn.proj")
    stitch_lora_rank: int | None = None          # default: lora_rank; 0 = train stitching weights whole
    floor: float = 0.3                           # uniform share of the stitch-sampling probabilities
    score_momentum: float = 0.9                  # moving average of importance scores
    seed: int = 0
    stitch_init: str = "ls"                      # ls | keep
    init_batch: int = 100
    token_keep: float = 1.0                      # < 1: each step runs a random share of the patch tokens
    eval_batch_size: int = 256
    quiet: bool = False

    def check(self) -> None:
        for name in ("epochs", "batch_size", "lora_rank", "init_batch", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}",
                                    hint="give a positive integer")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"learning rate must be positive, got {self.lr}", hint="e.g. --lr 1e-3")
        if not (0.0 < self.token_keep <= 1.0):
            raise TrainingError(f"token keep must be in (0, 1], got {self.token_keep}", hint="e.g. --token-keep 0.5")
        if not 0.0 <= self.floor <= 1.0:
            raise TrainingError(f"floor must be between 0 and 1, got {self.floor}", hint="e.g. --floor 0.3")
        if self.stitch_init not in ("ls", "keep"):
            raise TrainingError(f"stitch init must be 'ls' or 'keep', got {self.stitch_init!r}",
                                hint="use --stitch-init ls")
        from ..supernet.spec import ANCHOR_LINEARS
        bad = [t for t in self.lora_targets if t not in ANCHOR_LINEARS]
        if bad:
            raise TrainingError(f"unknown LoRA target(s) {bad}", hint=f"choose from {','.join(ANCHOR_LINEARS)}")

    @property
    def lora(self) -> LoraSpec:
        return LoraSpec(self.lora_rank, float(self.lora_alpha or self.lora_rank), tuple(self.lora_targets))

    @property
    def stitch_lora(self) -> LoraSpec | None:
        r = self.lora_rank if self.stitch_lora_rank is None else self.stitch_lora_rank
        return None if r == 0 else LoraSpec(r, float(self.lora_alpha or r), ())

    def resume_key(self) -> dict:
        """Settings that must match for a resumed run to equal an uninterrupted one."""
        return {k: v for k, v in asdict(self).items() if k not in ("quiet", "eval_batch_size")}


@dataclass
class TrainResult:
    model: Supernet
    training: dict
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay: a pure function of the step, so a resumed run matches."""
    warm = max(1, int(config.warmup_fraction * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def prepare(model: Supernet, data: DataSplits, config: TrainConfig) -> tuple[Supernet, list[str]]:
    """Adapt ``model`` for ESTA on ``data`` and (for a fresh adaptation) fit its stitching layers."""
    torch.manual_seed(config.seed)                       # new LoRA / heads start the same every run
    fresh = model.spec.adaptation.lora is None or not model.spec.adaptation.stitch_bias
    model, notes = adapt_supernet(model, lora=config.lora, stitch_lora=config.stitch_lora,
                                  num_classes=data.num_classes, image_size=data.image_size)
    if config.stitch_init == "ls" and fresh:
        g = torch.Generator().manual_seed(config.seed)
        idx = torch.randperm(len(data.y_train), generator=g)[:config.init_batch]
        res = init_stitching_layers(model, data.x_train[idx])
        if res:
            notes.append(f"stitching layers fitted by least squares on {len(idx)} images "
                         f"(relative residual {min(res.values()):.3f}-{max(res.values()):.3f})")
    return model, notes


class Trainer:
    """Holds the model, optimizer and sampler; ``step`` trains one stitch on one batch."""

    def __init__(self, model: Supernet, config: TrainConfig) -> None:
        self.model = model
        self.config = config
        self.groups: TrainableGroups = trainable_groups(model)
        # Plain Adam, no weight decay: decay would shrink every stitch's rows on every step.
        self.optimizer = torch.optim.Adam(self.groups.all, lr=config.lr)
        self.sampler = ImportanceSampler(model.space.ids, floor=config.floor, momentum=config.score_momentum,
                                         seed=config.seed)
        self.step_count = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, stitch_id: int, lr: float | None = None) -> float:
        model = self.model
        model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr if lr is None else lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, stitch_id, keep_tokens=self._kept_tokens(x)), y)
        loss.backward()
        self.sampler.update(stitch_id, snip_score(self.groups.scored))
        row = model.space.index(stitch_id)
        before = [t.detach().clone() for t in self.groups.tables]
        self.optimizer.step()
        with torch.no_grad():                            # other stitches' rows back, bit for bit
            for t, old in zip(self.groups.tables, before):
                mine = t[row].clone()
                t.copy_(old)
                t[row] = mine
        self.step_count += 1
        return float(loss.detach())


    def _kept_tokens(self, x: torch.Tensor) -> torch.Tensor | None:
        """Random patch tokens to keep this step (PatchDropout), seeded by (seed, step) so a resume matches."""
        keep = self.config.token_keep
        if keep >= 1.0:
            return None
        cfg = self.model.spec.anchors[0]
        n = cfg.num_patches
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step_count)
        k = max(1, int(round(n * keep)))
        return torch.rand(x.shape[0], n, generator=g).argsort(dim=1)[:, :k] + 1


@torch.no_grad()
def evaluate_stitches(model: Supernet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                      ids: list[int] | None = None) -> dict[str, float]:
    """Top-1 accuracy of every stitch (or ``ids``) on ``x``/``y``."""
    model.eval()
    acc = {}
    for sid in ids or model.space.ids:
        correct = 0
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i:i + batch_size], sid).argmax(-1) == y[i:i + batch_size]).sum())
        acc[str(sid)] = correct / max(1, len(y))
    return acc


def train_supernet(model: Supernet, data: DataSplits, config: TrainConfig, *, out: str | Path | None = None,
                   checkpoint: str | Path | None = None, resume: str | Path | None = None) -> TrainResult:
    """ESTA-adapt ``model`` on ``data``; write ``out`` (native .safetensors) when given.

    ``checkpoint``: folder rewritten after every epoch. ``resume``: such a folder; training continues
    where it stopped and, under the same settings and data, ends with the same weights.
    """
    config.check()
    if out is not None and Path(out).suffix != ".safetensors":
        raise TrainingError(f"the output must be a .safetensors file, got {out}",
                            hint="name it <name>.safetensors")
    notes: list[str] = []
    start_epoch, losses = 0, []
    if resume is not None:
        from ..supernet.formats import load_supernet
        folder = checkpoint_folder(Path(resume))
        state = read_state(folder)
        if state.get("config") != _jsonable(config.resume_key()) or state.get("data") != data.fingerprint:
            raise TrainingError(f"checkpoint {folder} was written with other settings or data",
                                hint="resume with the same data and options, or start without --resume")
        model = load_supernet(folder / "model.safetensors").model
        trainer = Trainer(model, config)
        load_optimizer(folder, trainer.optimizer, state)
        trainer.sampler.load_state_dict(state["sampler"])
        trainer.step_count, start_epoch, losses = state["step"], state["epoch"], list(state["losses"])
        notes.append(f"resumed from {folder} at epoch {start_epoch}")
    else:
        model, notes = prepare(model, data, config)
        trainer = Trainer(model, config)

    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    names = model.spec.names
    for note in notes:
        info(note, config.quiet)
    t0, seen = time.perf_counter(), 0
    with stage(f"ESTA {data.name}", total, quiet=config.quiet) as bar:
        for _ in range(trainer.step_count):
            bar.advance()
        for epoch in range(start_epoch, config.epochs):
            # A permutation per (seed, epoch): no data RNG state to carry across a resume.
            perm = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(n))
            for b in range(steps_per_epoch):
                idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
                sid = trainer.sampler.sample()
                loss = trainer.step(data.x_train[idx], data.y_train[idx], sid,
                                    lr=lr_at(trainer.step_count, total, config))
                if not math.isfinite(loss):
                    raise TrainingError(f"the loss became {loss} at step {trainer.step_count}",
                                        hint="lower --lr")
                losses.append(loss)
                seen += len(idx)
                rate = seen / max(1e-9, time.perf_counter() - t0)
                bar.advance(f"epoch {epoch + 1}/{config.epochs} loss {np.mean(losses[-20:]):.3f} "
                            f"stitch {sid} {model.space.get(sid).route(names)} {rate:.0f} img/s")
            if checkpoint is not None:
                save_checkpoint(Path(checkpoint), model, trainer.optimizer,
                                {"epoch": epoch + 1, "step": trainer.step_count, "losses": losses,
                                 "config": _jsonable(config.resume_key()), "data": data.fingerprint,
                                 "sampler": trainer.sampler.state_dict()})

    accuracy = evaluate_stitches(model, data.x_val, data.y_val, config.eval_batch_size)
    training = training_record(model, trainer, data, config, accuracy, total)
    result = TrainResult(model, training, losses, notes)
    if out is not None:
        result.path = save_supernet(model, out, model.spec.replace(training=training, input=data.input_spec()))
    model.spec = model.spec.replace(training=training, input=data.input_spec())
    return result


def training_record(model: Supernet, trainer: Trainer, data: DataSplits, config: TrainConfig,
                    accuracy: dict[str, float], steps: int) -> dict:
    ad = model.spec.adaptation
    return {
        "method": "esta",
        "dataset": data.summary(),
        "seed": config.seed, "epochs": config.epochs, "steps": steps, "batch_size": config.batch_size,
        "lr": config.lr, "metric": "top1", "token_keep": config.token_keep,
        "accuracy": accuracy,
        "importance": trainer.sampler.importance(),
        "draws": {str(sid): int(c) for sid, c in zip(trainer.sampler.ids, trainer.sampler.draws)},
        "sampling": {"floor": config.floor, "score_momentum": config.score_momentum},
        "lora": {"rank": ad.lora.rank, "alpha": ad.lora.alpha, "targets": list(ad.lora.targets),
                 "stitch_rank": None if ad.stitch_lora is None else ad.stitch_lora.rank},
        "trainable_params": sum(p.numel() for p in trainer.groups.all),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
