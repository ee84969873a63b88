"""`esta-export profile COMPILED_DIR --target T`: time every compiled stitch on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import command
from ..validation import cli_float, cli_int
from .common import add_compiled_args


@command("profile", order=90, help="measure the latency and peak memory of every compiled stitch on this "
                         "machine (blocks of consecutive calls per stitch, rotated rounds, provenance on every record)")
class ProfileCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_compiled_args(p)
        p.add_argument("--budget", "--profile-budget", dest="budget", type=cli_int(1, 1_000_000), metavar="N",
                       help="time at most N stitches, predict the rest, then time every stitch "
                            "on the predicted Pareto front")
        p.add_argument("--runs", type=cli_int(1, 10_000_000), metavar="N", help="minimum timed runs per stitch")
        p.add_argument("--seconds", type=cli_float(0, 3600, positive=True), metavar="T",
                       help="minimum timed seconds per stitch")
        p.add_argument("--stitches", metavar="IDS", help="comma-separated stitch ids")
        p.add_argument("--stability", choices=("cv", "trimmed_cv", "robust_cv"),
                       help="dispersion that flags a stitch unstable (default: cv = std/mean)")
        p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
        p.add_argument("--tune", action="store_true",
                       help="first measure the session settings that matter here (threads, "
                            "spinning, shared weights / OpenVINO hint and CPU pinning) on a few stitches, "
                            "three rounds, and profile with the fastest that meets the stability "
                            "goal (near-ties go to fewer threads)")
        p.add_argument("--fresh", action="store_true",
                       help="measure again even when the store has a matching record")
        p.add_argument("--remote", metavar="USER@HOST[:PORT]",
                       help="profile on a device over ssh (needs a bundle: --bundle)")
        p.add_argument("--ray", metavar="ADDRESS",
                       help="fan the stitches out over the boards of a Ray cluster that advertise "
                            "esta-target:<T> (pip install 'esta-export[fleet]')")
        p.add_argument("--common", type=int, default=3, metavar="N",
                       help="with --ray: stitches measured on every board for board-to-board spread (default 3)")
        p.add_argument("--bundle", metavar="DIR",
                       help="bundle folder for --remote (default: OUT/bundle/TARGET)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..ids import parse_id_list
        from ..errors import InputError
        from ..profiling.compiled import profile_compiled
        from ..stages import default_store_path
        from ..targets import load_target

        target = load_target(args.target)
        ids = parse_id_list(args.stitches)
        for name in ("runs", "seconds"):
            v = getattr(args, name)
            if v is not None and v <= 0:
                raise InputError(f"--{name} must be positive", hint=f"e.g. --{name} 3")
        compiled = Path(args.compiled_dir)
        store = Path(args.store) if args.store else default_store_path(compiled, target.name)
        if args.remote:
            return _remote(args, compiled, target, store, ids)
        if args.ray:
            return _fleet(args, compiled, target, store, ids)
        from ..fsutil import output_lock

        store.parent.mkdir(parents=True, exist_ok=True)
        # One local profiler per store folder: two would time each other and interleave records.
        with output_lock(store.parent, "profile store folder"):
            res = profile_compiled(compiled, target, store, stitch_ids=ids, budget=args.budget,
                                   fresh=args.fresh, min_runs=args.runs, min_seconds=args.seconds,
                                   memory=not args.no_memory, progress=_progress(),
                                   cv_metric=args.stability, tune=args.tune)
        print(f"{len(res.measured)} stitches measured, {len(res.cached)} reused from {res.store}"
              + (f", {len(res.predicted)} predicted" if res.predicted else ""))
        if res.predictor and res.predictor.get("leave_one_out", {}).get("mape") is not None:
            loo = res.predictor["leave_one_out"]
            print(f"predictor: leave-one-out MAPE {loo['mape']:.1%}, "
                  f"{loo['within_10pct']:.0%} within +-10% (n={loo['n_eval']})")
        if res.tune is not None:
            t = res.tune
            print(f"session settings: {t['choice']} ({'tuned now' if args.tune else 'tuned earlier'} "
                  f"on stitches {t['stitches']}; {len(t.get('candidates', []))} candidates"
                  + (f"; {t['note']}" if t.get("note") else "") + ")")
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return 0


def _fleet(args, compiled: Path, target, store: Path, ids) -> int:
    from ..profiling.fleet import board_spread, profile_fleet
    from ..profiling.store import ProfileStore

    res = profile_fleet(compiled, target, store, args.ray, stitch_ids=ids, common=args.common,
                        min_runs=args.runs, min_seconds=args.seconds, fresh=args.fresh,
                        progress=lambda m: print(f"  {m}", file=sys.stderr))
    print(f"{len(res.spread)} stitches measured on {len(res.boards)} boards "
          f"({', '.join(b.name for b in res.boards)}), {len(res.common)} common-set measurements, "
          f"{len(res.cached)} reused from {res.store}")
    if res.left:
        print(f"boards that left mid-run: {', '.join(res.left)} (their stitches ran on the others)")
    spread = board_spread(ProfileStore(res.store).records())
    if spread:
        print(f"board-to-board spread over the common set: up to {spread['max_spread']:.1%}; "
              + ", ".join(f"{b} x{f:.3f}" for b, f in spread["board_factor"].items()))
    return 0


def _progress():
    if not sys.stderr.isatty():
        return None
    last = {"phase": None}

    def say(phase: str, frac: float, detail: str) -> None:
        if phase != last["phase"] or frac >= 1.0:
            print(f"  {phase} {detail}".rstrip(), file=sys.stderr)
            last["phase"] = phase
    return say


def _remote(args, compiled: Path, target, store: Path, ids) -> int:
    from ..errors import InputError, RemoteError
    try:
        from ..bundle.remote import parse_remote, remote_profile
    except ImportError:
        raise RemoteError("--remote is not available in this build yet",
                          hint="copy the compiled folder to the device and run "
                               "'esta-export profile' there") from None
    from ..stages import default_bundle_dir
    bundle = Path(args.bundle) if args.bundle else default_bundle_dir(compiled, target.name)
    if not (bundle / "manifest.json").is_file():
        raise InputError(f"--remote needs a bundle; none at {bundle}",
                         hint=f"run 'esta-export bundle ... --target {target.name}' or pass --bundle")
    user, host, port = parse_remote(args.remote)
    kw = {"user": user, "store_path": store, "stitch_ids": ids}
    if port:
        kw["port"] = port
    if args.runs:
        kw["runs"] = args.runs
    if args.seconds:
        kw["seconds"] = args.seconds
    recs = remote_profile(bundle, host, **kw)
    print(f"{len(recs)} stitches measured on {args.remote}; records appended to {store}")
    return 0
