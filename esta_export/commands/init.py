"""`esta-export init`: write a commented esta.toml (the project file) in the working directory."""

from __future__ import annotations

import argparse

from . import command


@command("init", order=15, help="write a commented esta.toml here, so 'esta-export --target T' runs from it")
class Init:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("supernet", metavar="SUPERNET", nargs="?", help="supernet file to put in it")
        p.add_argument("--target", default=None, help="default target to put in it (default: cpu)")
        p.add_argument("--force", action="store_true", help="overwrite an existing esta.toml")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..project import PROJECT_FILE, write_template

        path = write_template(PROJECT_FILE, args.supernet, args.target, force=args.force)
        print(f"wrote {path}: edit it, then run 'esta-export --target {args.target or 'cpu'}'")
        return 0
