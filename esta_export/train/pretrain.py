"""Pretrain a small ViT anchor from scratch (the demo's anchor family; tests' trained anchors).

AdamW with warm-up and cosine decay, label smoothing, and random sub-patch translations (the only
augmentation that helps tiny digit images). ``token_keep`` < 1 trains on a random subset of the patch
tokens of every image (PatchDropout, Liu et al. 2022; FLIP): the cost falls with the tokens dropped,
evaluation uses them all. Deterministic under a seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import stage
from ..supernet.anchors import Anchor, AnchorConfig


def random_shift(x: torch.Tensor, max_shift: float, g: torch.Generator) -> torch.Tensor:
    """Translate every image by its own random offset of up to ``max_shift`` pixels (border padding)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = t[:, 0] * 2 / w, t[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def pretrain_anchor(cfg: AnchorConfig, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 64,
                    lr: float = 2e-3, weight_decay: float = 0.05, label_smoothing: float = 0.1,
                    max_shift: float = 3.0, token_keep: float = 1.0, seed: int = 0, quiet: bool = False) -> Anchor:
    """Train ``Anchor(cfg)`` on normalised NCHW ``x`` and labels ``y``; returns it in eval mode."""
    if not 0.0 < token_keep <= 1.0:
        raise ValueError(f"token_keep must be in (0, 1], got {token_keep}")
    torch.manual_seed(seed)
    model = Anchor(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr)
    n = len(y)
    steps = math.ceil(n / batch_size)
    total, warm = epochs * steps, max(1, epochs * steps // 10)
    g = torch.Generator().manual_seed(seed)
    step = 0
    with stage(f"pretrain {cfg.name}", total, quiet=quiet) as bar:
        for epoch in range(epochs):
            model.train()
            perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
            for b in range(steps):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                for group in opt.param_groups:
                    group["lr"] = lr * (step + 1) / warm if step < warm else \
                        lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
                xb = random_shift(x[idx], max_shift, g)
                logits = model(xb) if token_keep >= 1.0 else forward_kept(model, xb, token_keep, g)
                loss = F.cross_entropy(logits, y[idx], label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.advance(f"epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.3f}")
    return model.eval()


def forward_kept(model: Anchor, x: torch.Tensor, keep: float, g: torch.Generator) -> torch.Tensor:
    """The anchor's forward on the cls token plus a random ``keep`` share of each image's patch tokens."""
    h = model.forward_embed(x)                      # cls token first in both position conventions
    n = h.shape[1] - 1
    k = max(1, int(round(n * keep)))
    idx = torch.rand(h.shape[0], n, generator=g).argsort(dim=1)[:, :k] + 1
    h = torch.cat([h[:, :1], torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[2]))], dim=1)
    for blk in model.blocks:
        h = blk(h)
    return model.forward_tail(h, final_norm=True)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / max(1, len(y))
