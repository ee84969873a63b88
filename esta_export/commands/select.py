"""`esta-export select COMPILED_DIR --target T`: Pareto selection by measured latency."""

from __future__ import annotations

import argparse
import sys

from . import command
from ..validation import cli_float, cli_int
from .common import add_compiled_args


@command("select", order=100, help="choose stitches on the Pareto front of accuracy vs MEASURED latency "
                        "(with the FLOPs-based front beside it)")
class SelectCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_compiled_args(p)
        p.add_argument("--latency-budget-ms", type=cli_float(0, 1e9, positive=True), metavar="X",
                       help="only stitches at most this slow (median latency)")
        p.add_argument("--max-stitches", type=cli_int(1, 1_000_000), metavar="K",
                       help="at most K stitches, spread along the front by latency")
        p.add_argument("--min-accuracy", type=cli_float(0, 1), metavar="A", help="only stitches this good")
        p.add_argument("--memory", action="store_true",
                       help="peak memory as a third objective")
        p.add_argument("--val-data", metavar="DATA.npz",
                       help="measure top-1 of the compiled artifacts on 'x'/'y' arrays "
                            "(default: the supernet's recorded accuracy)")
        p.add_argument("--batch", type=cli_int(1, 65536), help="batch size whose profiles to use")
        p.add_argument("--out", metavar="FILE", help="selection file (default: OUT/select/TARGET.json)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..errors import InputError
        from ..select import select_compiled

        if args.out:
            from ..fsutil import check_out_dir
            check_out_dir(Path(args.out).parent, for_file=True)
        if args.out and Path(args.out).is_dir():
            raise InputError(f"--out {args.out} is a folder; the selection is one file",
                             hint="give a file path such as OUT/select/TARGET.json")

        res = select_compiled(args.compiled_dir, args.target, args.store,
                              latency_budget_ms=args.latency_budget_ms,
                              max_stitches=args.max_stitches, min_accuracy=args.min_accuracy,
                              memory=args.memory, val_data=args.val_data, out_path=args.out,
                              batch=args.batch)
        by = {s["id"]: s for s in res["stitches"]}
        print(f"selection ({res['mode']}, accuracy from {res['accuracy_source']}) -> {res['path']}")
        for i in res["selected"]:
            s = by[i]
            acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
            flag = " UNSTABLE" if s.get("unstable") else ""
            print(f"  {i:>4} {s['route'] or '':<24} {s['latency']:.3f} ms ({s['latency_source']})"
                  f"{flag}  acc {acc}")
        tau = res["kendall_tau"]
        print(f"FLOPs vs latency Kendall tau: {'n/a' if tau is None else f'{tau:.3f}'}; "
              f"{len(res['flops_dominated_on_device'])} FLOPs-front stitches dominated on device")
        for w in res["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        return 0
