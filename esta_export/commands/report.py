"""`esta-export report DIR`: report.json + a self-contained report.html with plots."""

from __future__ import annotations

import argparse

from . import command


@command("report", order=110, help="write report.json and a self-contained report.html (plots, sortable "
                        "stitch table, environment, warnings)")
class ReportCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("out_dir", metavar="DIR", nargs="?",
                       help="the main job's --out folder (holds select/, compiled/)")
        p.add_argument("--selection", action="append", default=[], metavar="FILE",
                       help="a select/<target>.json (repeatable; instead of or besides DIR)")
        p.add_argument("--compiled", action="append", default=[], metavar="COMPILED_DIR",
                       help="a compiled folder (repeatable)")
        p.add_argument("--report-dir", metavar="DIR", help="where to write (default: DIR/report)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..errors import InputError
        from ..report.json_report import write_report

        if not args.out_dir and not args.selection:
            raise InputError("report needs an output folder or --selection FILE",
                             hint="e.g. 'esta-export report out/'")
        from pathlib import Path

        dest = Path(args.report_dir) if args.report_dir else None
        if dest is not None and dest.exists() and not dest.is_dir():
            raise InputError(f"--report-dir {dest} is a file, not a folder", hint="give a folder for the report")
        paths = write_report(args.out_dir, args.report_dir, selections=args.selection,
                             compiled=args.compiled)
        print(f"report: {paths['report.html']} (and report.json, pareto.png)")
        return 0
