"""`esta-export targets`: list the hardware targets, without importing any runtime."""

from __future__ import annotations

import argparse
import json

from . import command


@command("targets", order=70, help="list hardware targets: device, backend, precision, whether the "
                         "backend is installed here and whether the target was verified on hardware")
class TargetsCommand:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.add_argument("--profiles", action="append", metavar="PATH", default=[],
                       help="profile store(s) to read where targets really ran (default: the "
                            "reference profiles in profiles/); may be repeated")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..backends import runtime_importable  # light: find_spec only, no runtime import
        from pathlib import Path

        from ..profiling.hardware import reference_profiles, where_ran
        from ..targets import list_targets

        targets = list_targets()
        paths = [q for p in args.profiles for q in (sorted(Path(p).glob("*.jsonl")) if Path(p).is_dir()
                                                    else [Path(p)])] or reference_profiles()
        ran = where_ran(targets, paths)
        rows = [{
            "name": t.name, "device": t.device.name, "backend": t.backend,
            "precision": t.precision, "precisions": list(t.precisions),
            "backend_installed": runtime_importable(t.backend),
            # From profile records (the processor that ran), not from the target file's claim.
            "verified_on_hardware": bool(ran[t.name]["ran_on"]),
            "where_ran": ran[t.name]["summary"], "records": ran[t.name]["records"],
            "target_file_claim": t.verified_on_hardware,
            "functional_check": t.functional_check or None,
            "description": t.description, "file": t.source,
        } for t in targets]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        cols = ("name", "device", "backend", "precision", "installed", "where it really ran")
        table = [(r["name"], r["device"], r["backend"], r["precision"],
                  "yes" if r["backend_installed"] else "no",
                  r["where_ran"] + (f"; functionally verified on {r['functional_check']}"
                                    if r["functional_check"] else "")) for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
        for row in (cols, *table):
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        return 0
