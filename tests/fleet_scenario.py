"""A fleet run on a local multi-node Ray cluster; run inside a loopback-only network namespace by
tests/test_profiling_fleet.py and benchmarks/bench_fleet.py.

    python tests/fleet_scenario.py COMPILED_DIR STORE RESULT.json [--boards 3] [--kill BOARD --after N]

Starts a head node (no target resource) and one node per board advertising
``esta-target:cpu`` and ``esta-board:bN``; with ``--kill``, removes that board's node (its raylet
and workers are killed) once N records are in the store, mid-run; writes what profile_fleet
returned to RESULT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def _records(store: Path) -> int:
    try:
        return sum(1 for line in store.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("compiled")
    ap.add_argument("store")
    ap.add_argument("result")
    ap.add_argument("--boards", type=int, default=3)
    ap.add_argument("--kill", default=None)
    ap.add_argument("--after", type=int, default=2)
    ap.add_argument("--common", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.05)
    args = ap.parse_args()

    from ray.cluster_utils import Cluster

    from esta_export.profiling.fleet import board_spread, profile_fleet

    # A killed node is declared dead within ~5 s (Ray's default is slower); not so fast that a node
    # of this busy machine is declared dead while alive.
    fast_failure = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5,
                    "health_check_initial_delay_ms": 1000}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 80 << 20,
        "_system_config": fast_failure})
    nodes = {}
    for i in range(1, args.boards + 1):
        nodes[f"b{i}"] = cluster.add_node(num_cpus=1, object_store_memory=80 << 20,
                                          resources={"esta-target:cpu": 1, f"esta-board:b{i}": 1})
    cluster.wait_for_nodes()
    store = Path(args.store)
    killed = {}

    def killer() -> None:
        while _records(store) < args.after:
            time.sleep(0.05)
        killed["at_records"] = _records(store)
        cluster.remove_node(nodes[args.kill], allow_graceful=False)
        killed["time"] = time.time()

    if args.kill:
        threading.Thread(target=killer, daemon=True).start()
    t0 = time.monotonic()
    res = profile_fleet(args.compiled, "cpu", store, cluster.address, common=args.common,
                        min_runs=args.runs, min_seconds=args.seconds,
                        progress=lambda m: print(m, file=sys.stderr, flush=True))
    out = {"boards": [b.name for b in res.boards], "left": res.left, "failed": res.failed,
           "spread": {str(k): {"board": r["board"], "median": r["latency_ms"]["median"]}
                      for k, r in res.spread.items()},
           "common": [[str(k[0]), k[1]] for k in res.common],
           "duplicates_dropped": res.duplicates_dropped, "overhead_ms": res.overhead_ms(),
           "wall_s": time.monotonic() - t0, "killed": killed,
           "board_spread": board_spread([json.loads(line) for line in store.read_text().splitlines()])}
    Path(args.result).write_text(json.dumps(out, indent=1))
    import ray

    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
