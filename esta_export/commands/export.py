"""esta-export export SUPERNET --out DIR [--stitches all|0,3,10-20] [--opset N]"""

from __future__ import annotations

import argparse

from . import command
from .common import add_quiet, add_supernet_args


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stitches", default="all", help="which stitches: 'all' (default) or ids such as 0,3,10-20")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17, or the target's maximum)")
    p.add_argument("--decompose-layernorm", action="store_true",
                   help="emit LayerNorm as primitive ops (TensorRT 8.5 / DLA); implied by --opset < 17")
    p.add_argument("--fresh", action="store_true", help="ignore earlier work in the output folder")
    p.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)


@command("export", order=50, help="slice every stitch and export validated ONNX graphs that share one weights file")
class Export:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_supernet_args(p)
        p.add_argument("--out", required=True, metavar="DIR", help="output folder")
        add_export_args(p)
        add_quiet(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..onnx_export import DEFAULT_OPSET, ExportSettings
        from ..run import run_export
        from .common import load_from_args

        loaded = load_from_args(args)
        settings = ExportSettings(opset=args.opset or DEFAULT_OPSET,
                                  layernorm="decomposed" if args.decompose_layernorm else "op",
                                  validate=not args.no_validate)
        result = run_export(loaded, args.out, stitches=args.stitches, settings=settings, fresh=args.fresh,
                            quiet=args.quiet)
        return 0 if result.summary["stitches"] else 2
