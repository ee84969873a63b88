"""Profile on a fleet of boards joined in a Ray cluster (optional extra: ``esta-export[fleet]``).

Each board joins the cluster as a Ray node advertising its target, and optionally its name::

    ray start --address HEAD:6379 --disable-usage-stats \\
        --resources '{"esta-target:jetson-orin": 1, "esta-board:orin-agx-1": 1}'

``esta-target:<T>: 1`` makes Ray run one profiling task at a time on that board (a task asks for
one unit). ``profile_fleet`` then:

- spreads the stitches over every board advertising ``esta-target:<T>`` (Ray's scheduler picks
  the board; each stitch is measured once);
- measures a small common set of stitches on every board (pinned by node), so board-to-board
  spread is known (:func:`board_spread`; the report shows it);
- appends each record to the profile store as it arrives, with the board's identity (``board``:
  the ``esta-board:`` name, else the Ray node id) and provenance (``fleet``: node id and address,
  role, Ray version, submission-to-result and scheduling overhead);
- survives a board leaving mid-run: Ray re-runs a task whose node died on another board of the
  target (``max_retries``); a result is recorded only once per stitch (and per board for the
  common set); common-set measurements pinned to the board that left are reported, not lost
  stitches. Re-running the command measures only what the store does not hold yet.

The board runs the same timing protocol as ``esta-export profile`` (runtime/timing.py) on the
artifact files sent through Ray's object store; the esta-export sources travel with the job
(Ray ``py_modules``), so a board needs only Ray, numpy and its runtime. Ray's usage statistics are
turned off. Tested on one machine with a local multi-node Ray cluster inside a network namespace
(tests/test_profiling_fleet.py); NOT verified on real boards.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError, ProfileError

RAY_VERSION = "2.60.0"  # the version tested; pyproject's fleet extra pins it
TARGET_PREFIX = "esta-target:"
BOARD_PREFIX = "esta-board:"


def _ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray", hint="pip install 'esta-export[fleet]'") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, and fast, when nothing listens at ``HOST:PORT`` (Ray itself retries for
    minutes). Other forms ("auto", "ray://...") are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        if address != "auto" and "://" not in address:
            raise InputError(f"--ray {address!r} is not HOST:PORT",
                             hint="give the head node's address, e.g. --ray 192.168.1.10:6379")
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ProfileError(f"no Ray cluster answers at {address} ({err.strerror or err})",
                           hint="start the head with 'ray start --head --port PORT "
                                "--disable-usage-stats' and pass its HOST:PORT") from None


@dataclass(frozen=True)
class Board:
    node_id: str
    name: str
    address: str


def boards_for(nodes: list[dict], target: str) -> list[Board]:
    """The alive Ray nodes advertising ``esta-target:<target>`` (from ``ray.nodes()``)."""
    out = []
    for n in nodes:
        res = n.get("Resources") or {}
        if not n.get("Alive") or res.get(TARGET_PREFIX + target, 0) < 1:
            continue
        names = sorted(k[len(BOARD_PREFIX):] for k in res if k.startswith(BOARD_PREFIX))
        out.append(Board(n["NodeID"], names[0] if names else n["NodeID"][:12],
                         n.get("NodeManagerAddress", "")))
    return sorted(out, key=lambda b: b.name)


def common_set(rows: list[dict], k: int) -> list:
    """``k`` stitches spread over the family's FLOPs (smallest, largest, between)."""
    if k <= 0 or not rows:
        return []
    by = sorted(rows, key=lambda r: (r.get("flops") or 0, str(r["id"])))
    if k >= len(by):
        return [r["id"] for r in by]
    picks = sorted({round(i * (len(by) - 1) / (k - 1)) for i in range(k)} if k > 1 else {0})
    return [by[i]["id"] for i in picks]


# ---- on the board ------------------------------------------------------------------------------
def measure_on_board(job: dict, files: dict[str, bytes]) -> dict:
    """Run on a board (a Ray task): write the stitch's artifact files, load them with the target's
    backend, time them with the profiler's protocol, return the record with the board's own
    fingerprint and how long the board was busy."""
    t0 = time.monotonic()
    from ..backends import get_backend
    from ..runtime.session import SessionSettings
    from ..targets import load_target
    from .compiled import load_for_profile
    from .environment import env_hash, fingerprint
    from .harness import TimingProtocol, profile_runners
    from .record import MeasureContext, build_record

    with tempfile.TemporaryDirectory(prefix="esta-fleet-") as tmp:
        root = Path(tmp)
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        (root / "target.toml").write_text(job["target_toml"])
        target = load_target(root / "target.toml")
        session = SessionSettings.from_dict(job["session"])
        proto = TimingProtocol(**job["protocol"])
        runner = load_for_profile(get_backend(job["backend"]), root / job["row"]["path"], target, session)
        try:
            stats = profile_runners({job["row"]["id"]: runner}, job["shape"], protocol=proto)
        finally:
            close = getattr(runner, "close", None)
            if close:
                close()
    env = fingerprint(threads=session.threads or None)
    # The host hashed the settings (its store is the cache); the board adds its own fingerprint.
    ctx = MeasureContext(target, job["backend"], job["precision"], job["batch"], job["shape"],
                         session.threads, env, env_hash(env), proto, session, job["transfers"],
                         job["settings"])
    rec = build_record(ctx, job["row"], stats[job["row"]["id"]],
                       mem={"error": "not measured in fleet runs"})
    import ray

    rec["fleet"] = {"ray_node_id": ray.get_runtime_context().get_node_id(),
                    "board_busy_ms": (time.monotonic() - t0) * 1e3, "pid": os.getpid()}
    return rec


# ---- on the host -------------------------------------------------------------------------------
@dataclass
class FleetResult:
    store: Path
    target: str
    boards: list[Board]
    spread: dict[Any, dict] = field(default_factory=dict)      # stitch id -> record
    common: dict[tuple, dict] = field(default_factory=dict)    # (stitch id, board) -> record
    cached: list = field(default_factory=list)
    left: list[str] = field(default_factory=list)              # boards that left mid-run
    failed: dict[str, str] = field(default_factory=dict)       # task -> why (never a lost stitch)
    duplicates_dropped: int = 0
    wall_s: float = 0.0

    def overhead_ms(self) -> list[float]:
        return [r["fleet"]["overhead_ms"] for r in [*self.spread.values(), *self.common.values()]]


def _board_gone(ray, err: Exception) -> bool:
    """Whether a task failed because its board went away (not because the measurement failed)."""
    gone = tuple(getattr(ray.exceptions, n) for n in ("NodeDiedError", "TaskUnschedulableError",
                                                      "WorkerCrashedError", "LocalRayletDiedError")
                 if hasattr(ray.exceptions, n))
    return isinstance(err, gone) or "node it was running on is dead" in str(err)


def _job_files(compiled_dir: Path, art: dict) -> dict[str, bytes]:
    rels = list(art.get("files") or [art["path"]])
    return {rel: (compiled_dir / rel).read_bytes() for rel in rels}


def profile_fleet(compiled_dir: str | Path, target: Any, store_path: str | Path | None, address: str,
                  *, stitch_ids=None, common: int = 3, min_runs: int | None = None,
                  min_seconds: float | None = None, fresh: bool = False, max_retries: int = 3,
                  ship_code: bool = True, progress: Callable[[str], None] | None = None) -> FleetResult:
    """Fan the compiled stitches out over the boards of ``target`` in the Ray cluster at
    ``address`` (see the module doc)."""
    from ..backends import get_backend  # noqa: F401 - fail here, not on a board, if broken
    from ..runtime.session import SessionSettings
    from ..targets import load_target
    from ..stages import default_store_path, input_shape_for, read_compiled, stitch_table
    from .harness import TimingProtocol
    from .record import MeasureContext
    from .store import ProfileStore

    ray = _ray()
    say = progress or (lambda msg: None)
    target = load_target(target) if isinstance(target, (str, Path)) else target
    compiled_dir = Path(compiled_dir)
    comp, export, _ = read_compiled(compiled_dir)
    if comp.get("target") not in (None, target.name):
        raise ProfileError(f"{compiled_dir} was compiled for target {comp.get('target')}, "
                           f"not {target.name}", hint=f"pass --target {comp.get('target')}")
    if comp.get("device_build_required"):
        raise ProfileError(f"the {target.name} engines in {compiled_dir} are built on the device",
                           hint="profile the bundle on each board (profile --remote) instead")
    rows = stitch_table(comp, export)
    arts = {a["id"]: a for a in comp.get("artifacts", [])}
    if stitch_ids is not None:
        wanted = {str(s) for s in stitch_ids}
        unknown = wanted - {str(r["id"]) for r in rows}
        if unknown:
            raise InputError(f"stitch ids not compiled: {', '.join(sorted(unknown))}",
                             hint="see compile.json for the compiled stitches")
        rows = [r for r in rows if str(r["id"]) in wanted]
    if not rows:
        raise ProfileError(f"no compiled artifacts in {compiled_dir}", hint="re-run 'esta-export compile'")
    if common < 0:
        raise InputError("--common must be 0 or more", hint="e.g. --common 3")
    store = ProfileStore(store_path or default_store_path(compiled_dir, target.name))
    backend = comp.get("backend") or target.backend
    proto = TimingProtocol.with_overrides(min_runs=min_runs, min_seconds=min_seconds)
    session = SessionSettings.from_target(target)
    precision = comp.get("precision") or target.precision
    batch = (target.shapes.batch_sizes or (1,))[0]
    shape = input_shape_for(export, comp, batch)
    # The pass as the boards will measure it (each board adds its own fingerprint).
    plan = MeasureContext.for_pass(target, backend=backend, precision=precision, batch=batch,
                                   shape=shape, protocol=proto, session=session, env={}, env_hash="")
    transfers, settings = plan.transfers, plan.settings
    if not target.source or not Path(target.source).is_file():
        raise ProfileError(f"target {target.name} has no TOML file to send to the boards",
                           hint="pass --target with a target name or a .toml path")
    target_toml = Path(target.source).read_text()

    runtime_env: dict[str, Any] = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    if ship_code:
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
    if not ray.is_initialized():
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING",
                     log_to_driver=False, namespace="esta-export")
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            raise ProfileError(f"cannot join the Ray cluster at {address}: "
                               f"{str(err).strip().splitlines()[0][:200]}",
                               hint=f"check that the head runs Ray {RAY_VERSION} (pip install "
                                    f"'esta-export[fleet]') and is reachable") from None
    resource = TARGET_PREFIX + target.name
    boards = boards_for(ray.nodes(), target.name)
    if not boards:
        raise ProfileError(f"no board in the Ray cluster at {address} advertises {resource}",
                           hint=f"on each board: ray start --address {address} --disable-usage-stats "
                                f"--resources '{{\"{resource}\": 1, \"{BOARD_PREFIX}NAME\": 1}}'")
    result = FleetResult(store.path, target.name, boards)
    by_node = {b.node_id: b for b in boards}

    # Resume: what the store already holds for these artifacts and settings.
    held_spread, held_common = {}, {}
    if not fresh:
        for rec in store.records():
            f = rec.get("fleet") or {}
            if rec.get("settings_hash") != settings or not f:
                continue
            if f.get("role") == "spread":
                held_spread[rec.get("artifact_sha256")] = rec
            elif f.get("role") == "common":
                held_common[(rec.get("artifact_sha256"), rec.get("board"))] = rec
    remote = ray.remote(measure_on_board)
    payloads: dict[Any, Any] = {}

    def job_for(row: dict) -> tuple[dict, Any]:
        if row["id"] not in payloads:
            payloads[row["id"]] = ray.put(_job_files(compiled_dir, arts[row["id"]]))
        job = {"row": row, "target_toml": target_toml, "backend": backend, "precision": precision,
               "batch": batch, "shape": shape, "protocol": proto.to_dict(), "session": session.to_dict(),
               "settings": settings, "transfers": transfers}
        return job, payloads[row["id"]]

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    queue: list[tuple[str, dict, Board | None]] = []
    for sid in common_set(rows, min(common, len(rows))):
        row = next(r for r in rows if r["id"] == sid)
        for b in boards:
            if (row["sha256"], b.name) in held_common:
                result.cached.append((sid, b.name))
            else:
                queue.append(("common", row, b))
    for row in rows:
        if row["sha256"] in held_spread:
            result.cached.append(row["id"])
        else:
            queue.append(("spread", row, None))

    pending: dict[Any, tuple[str, dict, Board | None, float]] = {}
    t_start = time.monotonic()

    def alive_boards() -> list[Board]:
        return boards_for(ray.nodes(), target.name)

    def submit(role: str, row: dict, board: Board | None) -> None:
        job, files = job_for(row)
        opts: dict[str, Any] = {"num_cpus": 0, "resources": {resource: 1}}
        if board is None:
            opts["max_retries"] = max_retries  # a board that dies: Ray re-runs it on another
        else:
            opts.update(max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                board.node_id, soft=False))
        ref = remote.options(**opts).remote(job, files)
        pending[ref] = (role, row, board, time.monotonic())

    while queue or pending:
        alive = alive_boards()
        alive_ids = {b.node_id for b in alive}
        for b in boards:
            if b.node_id not in alive_ids and b.name not in result.left:
                result.left.append(b.name)
                say(f"board {b.name} left the cluster")
        # Common-set work pinned to a board that left cannot run anywhere else.
        for item in [q for q in queue if q[2] is not None and q[2].node_id not in alive_ids]:
            queue.remove(item)
            result.failed[f"common {item[1]['id']} on {item[2].name}"] = "board left the cluster"
        if not alive and queue and not pending:
            raise ProfileError(f"every board of {target.name} left the cluster; "
                               f"{len(queue)} stitches not measured",
                               hint="re-run the command when boards are back: measured stitches are kept")
        while queue and len(pending) < max(1, len(alive)):
            submit(*queue.pop(0))
        if not pending:
            continue
        done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        for ref in done:
            role, row, board, t_sub = pending.pop(ref)
            try:
                rec = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - Ray raises its own types per failure
                why = str(err).strip().splitlines()[0][:200]
                if role == "common":
                    result.failed[f"common {row['id']} on {board.name}"] = why
                    if _board_gone(ray, err) and board.name not in result.left:
                        result.left.append(board.name)  # before the health check says so
                        say(f"board {board.name} left the cluster")
                    continue
                raise ProfileError(f"stitch {row['id']} could not be measured on any board: {why}",
                                   hint="see the Ray logs of the boards; measured stitches are kept") from None
            rtt_ms = (time.monotonic() - t_sub) * 1e3
            node = rec["fleet"]["ray_node_id"]
            ran_on = by_node.get(node) or Board(node, node[:12], "")
            rec["board"] = ran_on.name
            rec["fleet"].update(role=role, board=ran_on.name, address=ran_on.address,
                                ray_version=ray.__version__, submitted_to_result_ms=rtt_ms,
                                overhead_ms=max(0.0, rtt_ms - rec["fleet"]["board_busy_ms"]))
            key_map = result.spread if role == "spread" else result.common
            key = row["id"] if role == "spread" else (row["id"], ran_on.name)
            if key in key_map:  # a re-run after a lost node: keep the first, never record twice
                result.duplicates_dropped += 1
                continue
            store.append([rec])
            key_map[key] = rec
            say(f"{role} stitch {row['id']} on {ran_on.name}: "
                f"{rec['latency_ms']['median']:.3g} ms")
    alive_ids = {b.node_id for b in alive_boards()}  # a board that left during the last task
    result.left += [b.name for b in boards if b.node_id not in alive_ids and b.name not in result.left]
    result.wall_s = time.monotonic() - t_start
    return result


def board_spread(records: list[dict]) -> dict[str, Any] | None:
    """Board-to-board spread from fleet records: per common stitch, each board's median and the
    spread (max/min - 1); per board, the median ratio of its latency to the boards' median."""
    common: dict[Any, dict[str, float]] = {}
    for r in records:
        f = r.get("fleet") or {}
        if f.get("role") == "common" and r.get("board"):
            common.setdefault(r["stitch_id"], {})[r["board"]] = float(r["latency_ms"]["median"])
    common = {k: v for k, v in common.items() if len(v) >= 2}
    if not common:
        return None
    import numpy as np

    per_stitch = {str(k): {"boards": v, "spread": max(v.values()) / min(v.values()) - 1}
                  for k, v in sorted(common.items(), key=lambda kv: str(kv[0]))}
    ratios: dict[str, list[float]] = {}
    for v in common.values():
        mid = float(np.median(list(v.values())))
        for board, ms in v.items():
            ratios.setdefault(board, []).append(ms / mid)
    return {"stitches": per_stitch, "max_spread": max(s["spread"] for s in per_stitch.values()),
            "board_factor": {b: float(np.median(r)) for b, r in sorted(ratios.items())},
            "boards": sorted(ratios)}
