"""Thin command line: parse arguments, hand them to the command, turn EstaError into exit 2.

``esta-export SUPERNET --target T`` (no subcommand) runs the whole pipeline: it is sugar for
``esta-export run SUPERNET --target T``.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .commands import load_all
from .errors import EstaError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="esta-export",
        description="Export, compile, profile and bundle stitched supernets (SN-Net, SN-Netv2, ESTA) "
                    "for edge devices. 'esta-export SUPERNET --target T --out DIR' runs every stage.",
    )
    parser.add_argument("--version", action="version", version=f"esta-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in load_all().values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = set(load_all())
    # Bare form: `esta-export SUPERNET --target T` or `esta-export --target T` -> `run`.
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help", "--version"):
        first = argv[0]
        if not first.startswith("-") and not os.path.exists(first) and not any(c in first for c in "./\\"):
            print(f"esta-export: error: '{first}' is neither a command nor a supernet file; commands: "
                  f"{', '.join(sorted(commands))} (see 'esta-export --help')", file=sys.stderr)
            return 2
        argv = ["run", *argv]
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EstaError as err:
        print(f"esta-export: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours or the user's.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("esta-export: interrupted; finished work is kept, re-run the same command to resume",
              file=sys.stderr)
        return 130
    except MemoryError:
        print("esta-export: error: out of memory; use fewer --stitches or a smaller --batch",
              file=sys.stderr)
        return 2
    except OSError as err:
        # Disk full, permission denied, read-only file system: user-fixable environment problems.
        if os.environ.get("ESTA_EXPORT_DEBUG"):
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"esta-export: error: {err.strerror or err}{where}; free space or fix permissions "
              f"and re-run the same command (finished work is kept)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
