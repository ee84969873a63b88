"""The Ray fleet: three simulated boards on a local multi-node cluster inside a network namespace
that holds only loopback (no test traffic leaves it), one board killed mid-run; real ONNX
Runtime measurements on every board. Ray's usage statistics are off."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esta_export.profiling.fleet import Board, board_spread, boards_for, common_set

HAS_RAY = importlib.util.find_spec("ray") is not None
ROOT = Path(__file__).resolve().parents[1]


def _netns_reason() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) to make a loopback-only network namespace"
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no network namespace can be made here ({r.stderr.strip() or 'unshare -n failed'})"
    return None


def run_in_netns(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    cmd = "ip link set lo up && exec " + shlex.join([sys.executable, *args])
    return subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_boards_are_the_alive_nodes_advertising_the_target():
    nodes = [{"NodeID": "a" * 40, "Alive": True, "NodeManagerAddress": "10.0.0.2",
              "Resources": {"esta-target:jetson-orin": 1.0, "esta-board:agx-1": 1.0, "CPU": 12.0}},
             {"NodeID": "b" * 40, "Alive": True, "Resources": {"esta-target:jetson-orin": 1.0}},
             {"NodeID": "c" * 40, "Alive": False, "Resources": {"esta-target:jetson-orin": 1.0}},
             {"NodeID": "d" * 40, "Alive": True, "Resources": {"esta-target:cpu": 1.0}}]
    got = boards_for(nodes, "jetson-orin")
    assert got == [Board("a" * 40, "agx-1", "10.0.0.2"), Board("b" * 40, "b" * 12, "")]


def test_common_set_spans_the_flops():
    rows = [{"id": i, "flops": f} for i, f in enumerate([50, 10, 40, 30, 20])]
    assert common_set(rows, 3) == [1, 3, 0] and common_set(rows, 1) == [1]
    assert sorted(common_set(rows, 9)) == [0, 1, 2, 3, 4] and common_set(rows, 0) == []


def test_board_spread_from_records():
    recs = [{"stitch_id": s, "board": b, "fleet": {"role": "common"}, "latency_ms": {"median": ms}}
            for s, b, ms in [(0, "b1", 1.0), (0, "b2", 1.2), (0, "b3", 1.1), (4, "b1", 4.0), (4, "b2", 5.0)]]
    recs.append({"stitch_id": 1, "board": "b1", "fleet": {"role": "spread"}, "latency_ms": {"median": 9.0}})
    s = board_spread(recs)
    assert s["boards"] == ["b1", "b2", "b3"]
    assert s["stitches"]["0"]["spread"] == pytest.approx(0.2) and s["max_spread"] == pytest.approx(0.25)
    assert s["board_factor"]["b2"] > 1 > s["board_factor"]["b1"]
    assert board_spread(recs[-1:]) is None


@pytest.mark.skipif(not HAS_RAY, reason="needs Ray: pip install 'esta-export[fleet]'")
def test_profile_ray_without_a_cluster_is_one_line(compiled):
    """Nothing listens at the address: one line, exit 2, in seconds (Ray itself retries for
    minutes). Run in the loopback-only namespace, so no packet leaves it."""
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    code = ("import sys; from esta_export.cli import main; sys.exit(main(['profile', sys.argv[1], "
            "'--target', 'cpu', '--ray', sys.argv[2]]))")
    for address, needle in (("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
                            ("nonsense", "is not HOST:PORT")):
        r = run_in_netns(["-c", code, str(compiled), address], timeout=120)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_report_shows_the_spread_between_boards(tmp_path):
    """Read through the checked profile-store reader: other targets' and refused records are left out."""
    from esta_export.profiling.store import SCHEMA, SCHEMA_VERSION, ProfileStore
    from esta_export.report.json_report import _fleet_spread

    def rec(board: str, ms: float, target: str = "cpu", sha: str = "a" * 64) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "stitch_id": 0,
                "artifact_sha256": sha, "target": target, "batch": 1, "board": board,
                "fleet": {"role": "common"}, "latency_ms": {"median": ms}, "measured": True}

    store = ProfileStore(tmp_path / "cpu.jsonl")
    store.append([rec("b1", 1.0), rec("b2", 1.5), rec("b3", 9.0, target="other"),
                  rec("b3", -1.0)])   # another target's board, and a record the check refuses
    spread = _fleet_spread({"store": str(store.path), "target": "cpu"})
    assert spread["boards"] == ["b1", "b2"] and spread["max_spread"] == pytest.approx(0.5)
    assert _fleet_spread({"store": str(tmp_path / "none.jsonl"), "target": "cpu"}) is None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from fixtures.family import make_family
    from esta_export.compile import compile_export

    job = make_family(tmp_path_factory.mktemp("fleet"), with_selection=False)
    out = job / "compiled_fleet" / "cpu"
    compile_export(job / "export", "cpu", out)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs Ray: pip install 'esta-export[fleet]'")
def test_fleet_survives_a_board_killed_mid_run(compiled, tmp_path):
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    store, result = tmp_path / "cpu.jsonl", tmp_path / "result.json"
    r = run_in_netns([str(ROOT / "tests" / "fleet_scenario.py"), str(compiled), str(store), str(result),
                      "--boards", "3", "--kill", "b2", "--after", "3", "--common", "2"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(result.read_text())
    comp = json.loads((compiled / "compile.json").read_text())
    ids = sorted(str(a["id"]) for a in comp["artifacts"])
    # b2 is reported as gone once Ray says so (its health check, or a task that died with it);
    # whatever Ray said, its work never went missing (below)
    assert out["boards"] == ["b1", "b2", "b3"] and set(out["left"]) <= {"b2"}, out
    if out["failed"]:
        assert out["left"] == ["b2"], out
    assert out["killed"]["at_records"] >= 3
    recs = [json.loads(line) for line in store.read_text().splitlines()]
    spread = [r for r in recs if r["fleet"]["role"] == "spread"]
    # every stitch measured exactly once (none lost, none twice), on a board that was in the cluster
    assert sorted(str(r["stitch_id"]) for r in spread) == ids
    assert all(r["board"] in ("b1", "b2", "b3") and r["fleet"]["ray_node_id"] for r in recs)
    assert all(r["latency_ms"]["median"] > 0 and r["measured"] and r["env"] for r in recs)
    # nothing came from b2 after it was killed (record times are whole seconds)
    from datetime import datetime
    killed_at = out["killed"]["time"]
    assert all(datetime.fromisoformat(r["time"]).timestamp() <= killed_at + 1 for r in recs if r["board"] == "b2")
    # after the kill, the survivors did the rest
    assert {r["board"] for r in spread} <= {"b1", "b2", "b3"}
    common = {(str(r["stitch_id"]), r["board"]) for r in recs if r["fleet"]["role"] == "common"}
    assert len(common) == sum(1 for r in recs if r["fleet"]["role"] == "common")  # no duplicates
    survivors = {"b1", "b3"} - set(out["left"])
    for sid in {s for s, _ in common}:
        assert {(sid, b) for b in survivors} <= common  # the common set reached every surviving board
    assert all(any(b in k for b in out["left"]) for k in out["failed"]), out["failed"]
    assert out["board_spread"] and set(out["board_spread"]["boards"]) >= survivors
    assert all(ms >= 0 for ms in out["overhead_ms"])
    # resumable: a second run measures nothing again
    r2 = run_in_netns([str(ROOT / "tests" / "fleet_scenario.py"), str(compiled), str(store),
                       str(tmp_path / "again.json"), "--boards", "2"], timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["spread"] == {} and again["duplicates_dropped"] == 0
    new = [json.loads(line) for line in store.read_text().splitlines()][len(recs):]
    assert all(r["fleet"]["role"] == "common" and (str(r["stitch_id"]), r["board"]) not in common for r in new)
