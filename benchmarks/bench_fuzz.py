"""Long fuzz run for release checks: the parsers of tests/test_fuzz.py with many more examples.

    python benchmarks/bench_fuzz.py [--examples 5000] [--seed 0] [--parser spec|target|profile|manifest]

For every parser and every input strategy (random text/bytes, random JSON/TOML values, mutations
of a valid document) it runs ``--examples`` hypothesis examples (random, seeded; no shrinking
database kept) and prints executions, crashes (any exception other than a one-line EstaError) and
executions per second. Goal: no crash. The test suite runs the same targets with 200 deterministic
examples per parser; run this before a release (about a minute per 5000 examples per parser on one
core).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hseed  # noqa: E402

import test_fuzz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=5000, help="examples per parser (split over its strategies)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parser", choices=sorted(test_fuzz.fuzz_targets()), action="append")
    args = ap.parse_args()

    total_crashes = 0
    for parser, entries in test_fuzz.fuzz_targets().items():
        if args.parser and parser not in args.parser:
            continue
        runs = crashes = 0
        t0 = time.perf_counter()
        first = None
        for what, strategy, target in entries:
            count = {"n": 0, "crash": 0}

            def make(target=target, count=count, what=what):
                def counted(value):
                    count["n"] += 1
                    try:
                        target(value)
                    except Exception:  # noqa: BLE001 - a crash: count it, keep fuzzing
                        count["crash"] += 1
                        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
                        count.setdefault("first", f"{what}: {tb} <- {value!r:.200}")
                return counted

            cfg = settings(max_examples=args.examples // len(entries), deadline=None, database=None,
                           phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            # Seeded: hypothesis would otherwise seed from the test's identity.
            hseed(args.seed)(cfg(given(strategy)(make())))()
            first = first or count.get("first")
            runs += count["n"]
            crashes += count["crash"]
        dt = time.perf_counter() - t0
        total_crashes += crashes
        print(f"{parser:9s} {runs:7d} executions, {crashes} crashes, {runs / dt:8.0f} exec/s"
              + (f"  first: {first}" if first else ""))
    print(f"fuzz: {total_crashes} crashes")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
