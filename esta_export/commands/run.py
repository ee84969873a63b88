"""esta-export [run] SUPERNET --target T --out DIR: every stage, one after the other."""

from __future__ import annotations

import argparse

from . import command
from ..validation import cli_float, cli_int
from .common import add_quiet, add_supernet_args
from .export import add_export_args


@command("run", order=10, help="the whole pipeline: export, compile, profile, select, report, bundle (the default command)")
class Run:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_supernet_args(p, positional=False)
        p.add_argument("supernet", metavar="SUPERNET", nargs="?",
                       help="supernet file (.safetensors or SN-Net .pth); optional with --config or an esta.toml here")
        p.add_argument("--target", default="cpu", help="deployment target name or .toml file (default: esta.toml's, else cpu)")
        p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: out/<supernet name>-<target>)")
        add_export_args(p)
        g = p.add_argument_group("compile, profile, select, bundle")
        g.add_argument("--precision", default=None, help="override the target's precision (fp32, fp16, int8, ...)")
        g.add_argument("--calibration", default=None, metavar="DATA.npz",
                       help="preprocessed inputs x (and labels y) for int8 calibration and validation")
        g.add_argument("--val-data", default=None, metavar="DATA.npz",
                       help="labelled validation data: accuracy of the compiled artifacts decides the front")
        g.add_argument("--profile-budget", type=cli_int(1, 1_000_000), default=None, metavar="N",
                       help="time at most N stitches (plus the predicted front); predict the rest")
        g.add_argument("--runs", type=cli_int(1, 10_000_000), default=None, help="minimum timed runs per stitch")
        g.add_argument("--seconds", type=cli_float(0, 3600, positive=True), default=None, help="minimum timed seconds per stitch")
        g.add_argument("--stability", choices=("cv", "trimmed_cv", "robust_cv"), default="robust_cv",
                       help="dispersion measure that flags unstable timings (default robust_cv)")
        g.add_argument("--tune", dest="tune", action="store_true", default=None,
                       help="measure the session settings on this machine before profiling "
                            "(default for CPU targets)")
        g.add_argument("--no-tune", dest="tune", action="store_false",
                       help="profile with the target's session settings as they are")
        g.add_argument("--latency-budget-ms", type=cli_float(0, 1e9, positive=True), default=None)
        g.add_argument("--max-stitches", type=cli_int(1, 1_000_000), default=None, help="spread K stitches along the front")
        g.add_argument("--min-accuracy", type=cli_float(0, 1), default=None)
        g.add_argument("--archive", action="store_true", help="also write the bundle as one .tar.gz")
        g.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="profile on the boards of a Ray cluster advertising esta-target:<T> (esta-export[fleet])")
        d = p.add_argument_group("device (validate and profile on it over SSH)")
        d.add_argument("--device", metavar="USER@HOST[:PORT]", default=None,
                       help="export and compile here, then copy, (build engines,) validate and profile on this "
                            "device over ssh; resumes where it stopped when run again")
        d.add_argument("--identity", metavar="KEY", default=None,
                       help="SSH private key (default: the ssh client's configuration)")
        d.add_argument("--known-hosts", metavar="FILE", default=None,
                       help="known_hosts file (default: the ssh client's; new hosts are trusted on first use)")
        d.add_argument("--device-python", metavar="PATH", default=None,
                       help="Python on the device, with numpy and the target's runtime (default: python3)")
        d.add_argument("--device-dir", metavar="DIR", default=None,
                       help="work folder on the device (default: esta-export/<target>-<supernet hash>)")
        add_quiet(p)
        p.add_argument("--dry-run", action="store_true", help="print the resolved run configuration and exit")
        p.add_argument("--config", default=None, help="replay a run configuration saved as JSON (from --dry-run)")
        # Unset here means "not given": esta.toml (project.py), then RunConfig's defaults, fill it.
        p.set_defaults(target=None, stitches=None, stability=None)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..run import run_pipeline
        return run_pipeline(args)
