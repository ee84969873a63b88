"""esta-export [run] SUPERNET --target T --out DIR: every stage, one after the other."""

from __future__ import annotations

import argparse

from . import command
from .common import add_quiet, add_supernet_args
from .export import add_export_args


@command("run", help="the whole pipeline: export, compile, profile, select, report, bundle (the default command)")
class Run:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_supernet_args(p)
        p.add_argument("--target", default="cpu", help="deployment target name or .toml file (default: cpu)")
        p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: out/<supernet name>-<target>)")
        add_export_args(p)
        add_quiet(p)
        p.add_argument("--dry-run", action="store_true", help="print the resolved run configuration and exit")
        p.add_argument("--config", default=None, help="replay a run configuration saved as JSON (from --dry-run)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..run import run_pipeline
        return run_pipeline(args)
