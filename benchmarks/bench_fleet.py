"""Fleet figures (issue 13): 3 simulated boards (Ray nodes on this machine, in a loopback-only
network namespace), every stitch measured once plus the common set on each board, one board
killed mid-run; records lost; scheduling overhead per stitch (Ray task submission to result,
minus the time the board was busy). Real ONNX Runtime measurements of the test family.

    python benchmarks/bench_fleet.py        (needs root for unshare -n, and Ray)

Overhead: the first task on each board includes starting its Ray worker and unpacking the
shipped sources; the figure reported is the median over the later tasks ("warm"), with the cold
ones beside it. Timings under load are inflated: the load average is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test family's factory (tests/fixtures)


def main() -> int:
    import numpy as np

    from fixtures.family import make_family
    from esta_export.compile import compile_export

    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        job = make_family(Path(tmp) / "job", with_selection=False)
        compiled = job / "compiled_fleet" / "cpu"
        compile_export(job / "export", "cpu", compiled)
        n = len(json.loads((compiled / "compile.json").read_text())["artifacts"])
        store, result = Path(tmp) / "cpu.jsonl", Path(tmp) / "r.json"
        cmd = (f"ip link set lo up && exec {sys.executable} {ROOT / 'tests' / 'fleet_scenario.py'} "
               f"{compiled} {store} {result} --boards 3 --kill b2 --after 3 --common 2")
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
        r = subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, env=env,
                           timeout=1200)
        if r.returncode != 0:
            print(r.stderr[-3000:])
            return 1
        out = json.loads(result.read_text())
        recs = [json.loads(line) for line in store.read_text().splitlines()]
    spread = [x for x in recs if x["fleet"]["role"] == "spread"]
    ids = [str(x["stitch_id"]) for x in spread]
    first_per_board, warm, cold = set(), [], []
    for x in sorted(recs, key=lambda x: x["time"]):
        (warm if x["board"] in first_per_board else cold).append(x["fleet"]["overhead_ms"])
        first_per_board.add(x["board"])
    print(f"boards: {out['boards']}, left mid-run: {out['left']} (killed after {out['killed'].get('at_records')} records)")
    print(f"stitches: {n}; measured once each: {len(set(ids)) == n and len(ids) == n} "
          f"({len(ids)} spread records); lost: {n - len(set(ids))}; duplicates dropped: {out['duplicates_dropped']}")
    print(f"common-set records: {len(recs) - len(spread)}; pinned to the killed board and not run: "
          f"{len(out['failed'])}")
    print(f"scheduling overhead per stitch (submission to result minus board busy time): "
          f"warm median {np.median(warm):.1f} ms (n={len(warm)}), cold (first task per board) "
          f"median {np.median(cold):.0f} ms (n={len(cold)})")
    if out["board_spread"]:
        print(f"board-to-board spread over the common set: up to {out['board_spread']['max_spread']:.1%}")
    print(f"wall time of the fleet run: {out['wall_s']:.1f} s; load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
