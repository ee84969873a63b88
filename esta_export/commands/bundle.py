"""`esta-export bundle DIR --target T --out BUNDLE [--archive]`: the deployable for one target."""

from __future__ import annotations

import argparse

from . import command


@command("bundle", order=120, help="package the selected stitches of a target with the switching runtime and an example app")
class BundleCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("job", metavar="DIR", nargs="?", default=None,
                       help="the main job's output folder (holds export/, compiled/<T>/, select/<T>.json)")
        p.add_argument("--target", "-t", required=True, help="target name (e.g. cpu)")
        p.add_argument("--out", "-o", default=None,
                       help="bundle folder to write (default: DIR/bundle/<target>)")
        p.add_argument("--archive", action="store_true", help="write one .tar.gz instead of a folder")
        p.add_argument("--export", dest="export_dir", default=None, help="export folder (default: DIR/export)")
        p.add_argument("--compiled", default=None, help="compiled folder (default: DIR/compiled/<target>)")
        p.add_argument("--selection", default=None,
                       help="selection JSON (default: DIR/select/<target>.json; without one every validated stitch is bundled)")
        p.add_argument("--no-check", action="store_true",
                       help="skip re-running each bundled graph against its compiled artifact")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..errors import InputError
        from ..bundle.writer import write_bundle
        from ..stages import Layout

        if args.out is None and args.job is None:
            raise InputError("bundle needs DIR or --out", hint="esta-export bundle OUT_DIR --target cpu")
        out = Path(args.out) if args.out else Layout(args.job).bundle_dir(args.target)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file, not a folder", hint="give a folder for the bundle")
        path = write_bundle(args.job, args.target, out, archive=args.archive, export_dir=args.export_dir,
                            compiled_dir=args.compiled, selection=args.selection,
                            check_outputs=not args.no_check)
        if path.is_dir():
            import json

            m = json.loads((path / "manifest.json").read_text())
            size = sum(f["size"] for f in m["files"])
            print(f"bundle {path}: {len(m['stitches'])} stitches, {len(m['excluded'])} excluded, "
                  f"{size / 1e6:.1f} MB ({m['weights']['unique_bytes'] / 1e6:.1f} MB unique weights); "
                  f"{m['selection']['note']}")
            print(f"try it: python3 {path / 'app.py'}")
        else:
            print(f"bundle archive {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
