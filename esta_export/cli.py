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
    try:
        os.getcwd()
    except OSError:
        # Checked before any command imports torch: its import dies with a oneMKL error otherwise.
        print("esta-export: error: the working directory no longer exists (deleted or unmounted); "
              "cd into an existing folder and run again", file=sys.stderr)
        return 2
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
    _quiet_library_warnings()
    try:
        return int(args._run(args) or 0)
    except EstaError as err:
        print(f"esta-export: error: {' '.join(str(err).split())}", file=sys.stderr)
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
        print("esta-export: error: out of memory; use fewer --stitches or --samples, or a machine with more memory",
              file=sys.stderr)
        return 2
    except OSError as err:
        # Disk full, permission denied, read-only file system: user-fixable environment problems.
        if os.environ.get("ESTA_EXPORT_DEBUG"):
            raise
        print(f"esta-export: error: {os_error_line(err)}", file=sys.stderr)
        return 2


def _quiet_library_warnings() -> None:
    """Warnings raised inside the libraries we drive (deprecations, tracer notes) say nothing the
    user can act on; ours, and anything that matters, become our own lines instead."""
    import warnings

    if os.environ.get("ESTA_EXPORT_DEBUG"):
        return
    warnings.filterwarnings("ignore", module=r"(torch|onnx|onnxruntime|onnxscript|openvino|nncf|PIL|matplotlib|"
                                             r"numpy|timm|safetensors|google|tqdm)(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def os_error_line(err: OSError) -> str:
    """One line for an OSError that escaped a stage: what failed, on which path, and the fix."""
    import errno

    where = _user_path(getattr(err, "filename", None))
    at = f" ({where})" if where else ""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    reason = err.strerror or text
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"{reason}{at}: the disk (or a file-size limit) is full; free space or choose another --out, "
                f"then re-run the same command (finished work is kept)")
    if code == errno.EISDIR:
        return f"{where or 'a path'} is a folder where a file is expected; give a file path instead"
    if code == errno.ENOTDIR:
        return f"a part of {where or 'a path'} is a file where a folder is expected; choose another path"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}{at}; fix the permissions or choose another --out"
    if code == errno.ENAMETOOLONG:
        return f"{reason}{at}; choose a shorter path"
    if code == errno.ENOENT:
        return f"{reason}{at}; check the path (a folder in it may have been removed while running)"
    return f"{reason}{at}; fix the cause and re-run the same command (finished work is kept)"


def _user_path(name) -> str | None:
    """The path the user knows: a temporary '.NAME.xxxx.tmp' written beside NAME shows as NAME."""
    import re

    if not name:
        return None
    name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
    head, tail = os.path.split(name)
    m = re.fullmatch(r"\.(.+?)\.[A-Za-z0-9_]+\.tmp(\..*)?", tail)
    if m:
        tail = m.group(1)
    m = re.fullmatch(r"\.(.+)\.staging", os.path.basename(head))
    if m:
        head = os.path.join(os.path.dirname(head), m.group(1))
    return os.path.join(head, tail)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
