"""Rebuild the demo supernet from nothing: three ViT anchors pretrained on scikit-learn's digits,
stitched (SN-Net v1 space), least-squares initialised and ESTA-adapted; every stitch evaluated on
the held-out split.

    python examples/make_demo.py            # writes examples/demo/digits-esta.safetensors + digits-val.npz

Deterministic under --seed; a few minutes on 2 CPU cores. Needs only the installed esta-export
dependencies and scikit-learn (the digits ship inside it, no download).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# (name, width, heads, pretraining epochs). Growing width = growing cost; the narrow anchor gets a
# short pretraining so the family spans a clear accuracy range, as real families do.
ANCHORS = (("Ti", 16, 2, 40), ("S", 32, 2, 40), ("B", 64, 4, 50))
DEPTH, MLP_RATIO, IMAGE, PATCH = 6, 2.0, 32, 8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "examples" / "demo"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--esta-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest for these tiny models on a shared machine)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sklearn.datasets import load_digits

    from esta_export.fsutil import atomic_path
    from esta_export.supernet import AnchorConfig, Supernet, SupernetSpec
    from esta_export.train import TrainConfig, from_arrays, train_supernet
    from esta_export.train.pretrain import accuracy, pretrain_anchor

    t0 = time.perf_counter()
    digits = load_digits()                       # 1797 images, 8x8, values 0..16
    data = from_arrays(digits.images / 16.0, digits.target, IMAGE, labels=[str(i) for i in range(10)],
                       val_split=0.2, seed=args.seed, name="sklearn-digits", source="sklearn.datasets.load_digits")
    print(f"data: {len(data.y_train)} train / {len(data.y_val)} val images, upsampled 8x8 -> {IMAGE}x{IMAGE}")

    cfgs = [AnchorConfig(name, width, DEPTH, heads, mlp_ratio=MLP_RATIO, patch_size=PATCH, img_size=IMAGE,
                         num_classes=10) for name, width, heads, _ in ANCHORS]
    model = Supernet(SupernetSpec(tuple(cfgs), "snnet_v1", input=data.input_spec()))
    for i, (cfg, (_, _, _, epochs)) in enumerate(zip(cfgs, ANCHORS)):
        anchor = pretrain_anchor(cfg, data.x_train, data.y_train, epochs=epochs, seed=args.seed + i,
                                 quiet=args.quiet)
        model.anchors[i].load_state_dict(anchor.state_dict())
        print(f"pretrained {cfg.name} (width {cfg.embed_dim}, {epochs} epochs): "
              f"val top-1 {accuracy(anchor, data.x_val, data.y_val):.4f}  [{time.perf_counter() - t0:.0f} s]")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=args.esta_epochs, batch_size=64, lr=1e-3, lora_rank=4, seed=args.seed,
                         quiet=args.quiet)
    result = train_supernet(model, data, config, out=out / "digits-esta.safetensors")
    with atomic_path(out / "digits-val.npz", suffix=".npz") as tmp:
        np.savez_compressed(tmp, x=data.x_val.numpy().astype(np.float32), y=data.y_val.numpy().astype(np.int64))

    acc = result.training["accuracy"]
    front = pareto_count(result.model, acc)
    size = (out / "digits-esta.safetensors").stat().st_size
    print(f"ESTA: {len(acc)} stitches, val top-1 {min(acc.values()):.4f}..{max(acc.values()):.4f}, "
          f"{front} non-dominated by FLOPs; file {size / 1e6:.2f} MB  [{time.perf_counter() - t0:.0f} s]")
    return 0


def pareto_count(model, accuracy: dict[str, float]) -> int:
    """Stitches no other stitch beats on both FLOPs (<=) and accuracy (>=, one strictly)."""
    from esta_export.flops import stitch_flops
    pts = [(stitch_flops(model.spec.anchors, s), accuracy[str(s.id)]) for s in model.space.stitches]
    return sum(1 for f, a in pts
               if not any((f2 <= f and a2 >= a) and (f2 < f or a2 > a) for f2, a2 in pts))


if __name__ == "__main__":
    raise SystemExit(main())
