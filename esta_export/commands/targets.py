"""`esta-export targets`: list the hardware targets, without importing any runtime."""

from __future__ import annotations

import argparse
import json

from . import command


@command("targets", help="list hardware targets: device, backend, precision, whether the "
                         "backend is installed here and whether the target was verified on hardware")
class TargetsCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..backends import runtime_importable  # light: find_spec only, no runtime import
        from ..targets import list_targets

        rows = [{
            "name": t.name, "device": t.device.name, "backend": t.backend,
            "precision": t.precision, "precisions": list(t.precisions),
            "backend_installed": runtime_importable(t.backend),
            "verified_on_hardware": t.verified,
            "verification": t.verification,
            "description": t.description, "file": t.source,
        } for t in list_targets()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        cols = ("name", "device", "backend", "precision", "installed", "verification")
        table = [(r["name"], r["device"], r["backend"], r["precision"],
                  "yes" if r["backend_installed"] else "no", r["verification"]) for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
        for row in (cols, *table):
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        return 0
