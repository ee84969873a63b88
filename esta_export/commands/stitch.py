"""esta-export stitch ANCHOR [ANCHOR ...] --space snnet_v1|snnet_v2 --out SUPERNET.safetensors"""

from __future__ import annotations

import argparse

from . import command
from ..validation import cli_float, cli_int
from .common import add_quiet


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    from ..errors import InputError
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}", hint="e.g. 0.5,0.5,0.5") from None
    import math
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} must be finite numbers, got {text!r}", hint="e.g. 0.5,0.5,0.5")
    return values


@command("stitch", order=40, help="stitch pretrained ViT/DeiT anchors (timm files or folders) into a supernet, "
                        "stitching layers fitted by least squares")
class Stitch:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("anchors", nargs="+", metavar="ANCHOR",
                       help="timm ViT/DeiT/DeiT-3 model: .safetensors, .pth/.bin state dict, or a timm model folder "
                            "(config.json + model.safetensors, as timm and the Hugging Face cache lay it out)")
        p.add_argument("--space", required=True, choices=("snnet_v1", "snnet_v2"),
                       help="stitch space: SN-Net v1 sliding window (equal depths, 2+ anchors) or SN-Netv2 "
                            "two-way (2 anchors)")
        p.add_argument("--out", required=True, metavar="SUPERNET.safetensors", help="native supernet to write")
        p.add_argument("--data", metavar="DATA",
                       help="calibration images for the least-squares fit: image folder (one sub-folder per class) "
                            "or .npz with x and y; taken from the training split 'train' uses with the same "
                            "--seed/--val-split (default: random inputs, with a warning)")
        p.add_argument("--calib-images", type=cli_int(1, 100_000), default=100,
                       help="images in the least-squares fit (default 100, as SN-Net)")
        p.add_argument("--val-split", type=cli_float(0, 0.95, positive=True), default=0.2,
                       help="held-out fraction of --data never used for the fit (default 0.2)")
        p.add_argument("--seed", type=cli_int(0, 2**32 - 1), default=0)
        p.add_argument("--num-heads", metavar="H1,H2,...", default=None,
                       help="attention heads per anchor, narrowest first (default: config.json, else width/64)")
        p.add_argument("--names", metavar="N1,N2,...", default=None,
                       help="anchor names used in routes, narrowest first (default: Ti/S/B/L by width)")
        p.add_argument("--image-size", type=cli_int(1, 16384), default=None,
                       help="resample every anchor's position embeddings to this input size")
        p.add_argument("--mean", default=None, help="per-channel mean (default: config.json, else computed from "
                                                    "--data, else ImageNet's)")
        p.add_argument("--std", default=None, help="per-channel std (same defaults as --mean)")
        p.add_argument("--threads", type=cli_int(1, 4096), default=None, help="torch CPU threads")
        add_quiet(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import sys
        from pathlib import Path

        import torch

        from ..errors import InputError
        from ..progress import info
        from ..supernet.formats import save_supernet
        from ..supernet.formats.checks import parse_num_heads
        from ..supernet.formats.timm import read_anchor
        from ..supernet.spec import DEFAULT_MEAN, DEFAULT_STD, InputSpec
        from ..train.stitch import order_by_width, stitch_anchors

        if args.threads:
            torch.set_num_threads(args.threads)
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise InputError(f"--out must end in .safetensors, got {out.name}", hint="name it <name>.safetensors")
        if any(out.resolve() == Path(a).resolve() for a in args.anchors):
            raise InputError("--out is one of the anchors", hint="choose another output name")
        if not 0.0 < args.val_split < 1.0:
            raise InputError(f"--val-split must be between 0 and 1, got {args.val_split}", hint="e.g. 0.2")
        anchors = [read_anchor(a) for a in args.anchors]
        ordered = [anchors[i] for i in order_by_width(anchors)]
        first = ordered[0].config
        size = args.image_size or first.img_size
        mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
        for what, v in (("--mean", mean), ("--std", std)):
            if v is not None and len(v) != first.in_chans:
                raise InputError(f"{what} needs {first.in_chans} values, got {len(v)}", hint="one per channel")
        if std is not None and min(std) <= 0:
            raise InputError("--std values must be positive", hint="e.g. 0.229,0.224,0.225")
        mean = mean or next((a.mean for a in ordered if a.mean), None)
        std = std or next((a.std for a in ordered if a.std), None)
        labels = next((a.labels for a in ordered if a.labels), None)
        if args.data:
            from ..train import load_data
            data = load_data(args.data, size, in_chans=first.in_chans, val_split=args.val_split, seed=args.seed,
                             mean=mean, std=std)
            if data.num_classes > first.num_classes:
                raise InputError(f"--data has {data.num_classes} classes, the anchors' heads {first.num_classes}",
                                 hint="calibration images only need the anchors' kind of input; any labels <= "
                                      "the class count do")
            g = torch.Generator().manual_seed(args.seed)
            idx = torch.randperm(len(data.y_train), generator=g)[:args.calib_images]
            calib = data.x_train[idx]
            mean, std = data.mean, data.std
            labels = labels or (data.labels if data.num_classes == first.num_classes else None)
            calibration = {"source": "data", "data": data.name, "images": int(len(idx)), "seed": args.seed,
                           "val_split": args.val_split}
        else:
            g = torch.Generator().manual_seed(args.seed)
            calib = torch.randn(args.calib_images, first.in_chans, size, size, generator=g)
            calibration = {"source": "random", "images": args.calib_images, "seed": args.seed}
        input_spec = InputSpec(image_size=size, mean=tuple(mean or DEFAULT_MEAN), std=tuple(std or DEFAULT_STD),
                               labels=labels, in_chans=first.in_chans)
        names = None if args.names is None else [n.strip() for n in args.names.split(",")]
        source = {"format": "anchors", "anchors": [a.record() for a in ordered], "calibration": calibration}
        stitched = stitch_anchors(anchors, args.space, calib, names=names, num_heads=parse_num_heads(args.num_heads),
                                  image_size=args.image_size, input_spec=input_spec, source=source)
        model = stitched.model
        res = stitched.residuals
        if not args.data:
            print(f"warning: no --data: stitching layers fitted on {args.calib_images} random inputs; pass --data "
                  f"with a few hundred task images for a meaningful fit", file=sys.stderr)
        calibration["residual"] = {"min": min(res.values()), "max": max(res.values()),
                                   "mean": sum(res.values()) / len(res)}
        spec = model.spec.replace(source=source)
        model.spec = spec
        for a in ordered:
            for note in a.notes:
                info(f"{a.path.name}: {note}", args.quiet)
        for note in stitched.notes:
            info(note, args.quiet)
        heads = ",".join(str(a.num_heads) for a in spec.anchors)
        info(f"anchors {', '.join(f'{a.name} (width {a.embed_dim}, depth {a.depth}, {a.style})' for a in spec.anchors)}; "
             f"heads {heads} ({spec.num_heads_source})", args.quiet)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_supernet(model, out, spec)
        print(f"wrote {out}: {args.space}, {len(model.space)} stitches, {len(res)} stitching layers fitted by "
              f"least squares on {calibration['images']} {'images' if args.data else 'random inputs'} "
              f"(relative residual {min(res.values()):.3f}-{max(res.values()):.3f}); heads {heads} "
              f"({spec.num_heads_source})")
        return 0
