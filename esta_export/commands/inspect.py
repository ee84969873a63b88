"""esta-export inspect SUPERNET [--json]"""

from __future__ import annotations

import argparse
import json

from . import command
from .common import add_supernet_args


@command("inspect", order=20, help="show a supernet's anchors, stitch space and per-stitch route, FLOPs, params, accuracy")
class Inspect:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_supernet_args(p)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..inspect import describe, format_table
        from .common import load_from_args

        loaded = load_from_args(args)
        desc = describe(loaded)
        if args.json:
            print(json.dumps(desc, indent=2))
        else:
            print(format_table(desc))
        return 0
