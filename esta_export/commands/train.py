"""esta-export train SUPERNET --data DATA --out OUT.safetensors [options]"""

from __future__ import annotations

import argparse

from . import command
from ..validation import cli_float, cli_int
from .common import add_quiet, add_supernet_args


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    from ..errors import InputError
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}", hint="e.g. 0.5,0.5,0.5") from None


@command("train", order=60, help="ESTA-adapt a supernet to a dataset: shared LoRA, per-stitch biases, importance sampling")
class Train:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_supernet_args(p)
        p.add_argument("--data", required=True, metavar="DATA",
                       help="image folder (one sub-folder per class) or .npz with x (N,H,W[,C]) and y (N)")
        p.add_argument("--out", required=True, metavar="OUT.safetensors", help="trained native supernet to write")
        p.add_argument("--epochs", type=cli_int(1, 1_000_000), default=10)
        p.add_argument("--batch-size", type=cli_int(1, 65536), default=64)
        p.add_argument("--lr", type=cli_float(0, 100, positive=True), default=1e-3)
        p.add_argument("--lora-rank", type=cli_int(1, 4096), default=8, help="rank of the shared LoRA updates (default 8)")
        p.add_argument("--lora-targets", default="attn.qkv,attn.proj",
                       help="anchor linears that get LoRA (default attn.qkv,attn.proj; also mlp.fc1, mlp.fc2)")
        p.add_argument("--stitch-lora-rank", type=cli_int(1, 4096), default=None,
                       help="LoRA rank of the stitching layers (default: --lora-rank; 0 trains them whole)")
        p.add_argument("--stitch-init", choices=("ls", "keep"), default="ls",
                       help="fit new stitching layers by least squares (default) or keep the file's")
        p.add_argument("--val-split", type=cli_float(0, 0.95), default=0.2, help="held-out fraction (default 0.2)")
        p.add_argument("--seed", type=cli_int(0, 2**32 - 1), default=0)
        p.add_argument("--floor", type=cli_float(0, 1), default=0.3,
                       help="uniform share of stitch-sampling probabilities, so no stitch starves (default 0.3)")
        p.add_argument("--token-keep", type=cli_float(0, 1, positive=True), default=1.0,
                       help="train each step on this random share of the patch tokens (PatchDropout; evaluation "
                            "and export use all tokens; default 1.0 = all)")
        p.add_argument("--image-size", type=cli_int(1, 4096), default=None,
                       help="train at this size (default: the supernet's); position embeddings are resampled")
        p.add_argument("--mean", default=None, help="per-channel mean, e.g. 0.485,0.456,0.406 (default: computed)")
        p.add_argument("--std", default=None, help="per-channel std (default: computed)")
        p.add_argument("--name", default=None, help="dataset name recorded in the file (default: DATA's name)")
        p.add_argument("--checkpoint", default=None, metavar="DIR",
                       help="checkpoint folder rewritten every epoch (default: OUT.ckpt)")
        p.add_argument("--resume", default=None, metavar="CKPT", help="continue from a checkpoint folder")
        p.add_argument("--threads", type=cli_int(1, 4096), default=None, help="torch CPU threads (default: torch's choice)")
        add_quiet(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import torch

        from ..progress import info
        from ..train import TrainConfig, load_data, train_supernet
        from .common import load_from_args

        if args.threads:
            torch.set_num_threads(args.threads)
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank,
            lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
            stitch_lora_rank=args.stitch_lora_rank, floor=args.floor, seed=args.seed,
            stitch_init=args.stitch_init, token_keep=args.token_keep, quiet=args.quiet)
        config.check()
        loaded = load_from_args(args)
        anchor = loaded.spec.anchors[0]
        data = load_data(args.data, args.image_size or anchor.img_size, in_chans=anchor.in_chans,
                         val_split=args.val_split, seed=args.seed, mean=_floats(args.mean), std=_floats(args.std),
                         name=args.name)
        info(f"data {data.name}: {len(data.y_train)} train / {len(data.y_val)} val images, "
             f"{data.num_classes} classes", args.quiet)
        checkpoint = args.checkpoint or f"{args.out}.ckpt"
        result = train_supernet(loaded.model, data, config, out=args.out, checkpoint=checkpoint, resume=args.resume)
        acc = result.training["accuracy"]
        best = max(acc, key=acc.get)
        print(f"wrote {result.path}: {len(acc)} stitches, val top-1 {min(acc.values()):.4f}..{acc[best]:.4f} "
              f"(best stitch {best}); trainable {result.training['trainable_params']:,} of "
              f"{result.training['total_params']:,} parameters")
        return 0
