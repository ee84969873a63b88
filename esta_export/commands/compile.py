"""`esta-export compile DIR --target T`: compile and validate every exported stitch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import command
from ..validation import cli_float, cli_int


@command("compile", order=80, help="compile the stitches of an export folder for a target and validate "
                         "each artifact against the fp32 reference")
class CompileCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("export_dir", metavar="DIR", help="export folder (holds export.json)")
        p.add_argument("--target", required=True,
                       help="target name (see 'esta-export targets') or a path to a .toml")
        p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"),
                       help="override the target's default precision")
        p.add_argument("--calibration", metavar="DATA.npz",
                       help="preprocessed float32 NCHW inputs 'x' (and int labels 'y'); used to "
                            "calibrate int8 and as validation inputs (default: random inputs)")
        p.add_argument("--out", metavar="COMPILED_DIR",
                       help="output folder (default: DIR/../compiled/TARGET)")
        p.add_argument("--stitches", metavar="IDS", help="comma-separated stitch ids (default: all)")
        p.add_argument("--samples", type=cli_int(1, 4096), default=32,
                       help="random reference inputs when no --calibration (default: 32)")
        p.add_argument("--fresh", action="store_true", help="recompile instead of reusing "
                                                            "finished artifacts")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..ids import parse_id_list
        from ..compile import compile_export
        from ..errors import InputError
        from ..stages import default_compiled_dir
        from ..targets import load_target

        target = load_target(args.target)
        export_dir = Path(args.export_dir)
        out = Path(args.out) if args.out else default_compiled_dir(export_dir, target.name)
        ids = parse_id_list(args.stitches)
        if args.samples < 1:
            raise InputError("--samples must be >= 1", hint="e.g. --samples 32")
        s = compile_export(export_dir, target, out, precision=args.precision,
                           calibration=args.calibration, stitch_ids=ids,
                           progress=lambda m: print(m, file=sys.stderr), fresh=args.fresh,
                           samples=args.samples)
        print(f"{len(s['artifacts'])} artifacts for {s['target']} ({s['backend']}, "
              f"{s['precision']}) in {out}; {len(s['failed'])} failed")
        for f in s["failed"]:
            print(f"  failed: stitch {f['id']} ({f['route']}): {f['reason']}")
        if s["device_build_required"]:
            print(f"engines NOT built: TensorRT engines must be built on the device "
                  f"({s['artifacts'][0]['info'].get('device_build_required', '') if s['artifacts'] else ''}). "
                  f"Copy {out} to the device and follow {out / 'README_DEVICE.md'}")
        if not s["verified_on_hardware"]:
            print(f"target {s['target']}: not verified on hardware")
        return 0 if s["artifacts"] else 2
