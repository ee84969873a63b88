"""Profile a compiled folder: time every stitch (or a budgeted subset plus the predicted front),
measure its memory, and append provenance-carrying records to the profile store.

Flow: read compile.json and export.json -> refuse artifacts that were not built here -> reuse
records whose (artifact sha256, environment hash, settings hash) are already in the store ->
time the rest (or ``budget`` of them, chosen by the predictor's design) in interleaved rounds ->
fit the latency model, predict the unprofiled, and time for real every stitch on the predicted
Pareto front until the front holds only measured stitches.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from ..errors import InputError, ProfileError
from ..runtime.session import SessionSettings
from ..stages import (default_store_path, input_shape_for, read_compiled,  # noqa: F401  (stages owns them)
                      stitch_table)
from .harness import ProgressFn, TimingProtocol, profile_runners, warm_up
from .record import MeasureContext, build_record
from .store import ProfileStore

MAX_FRONT_ROUNDS = 5


@dataclass
class ProfileResult:
    store: Path
    target: str
    env: dict[str, Any]
    env_hash: str
    measured: dict[Hashable, dict[str, Any]] = field(default_factory=dict)   # new this run
    cached: dict[Hashable, dict[str, Any]] = field(default_factory=dict)     # reused records
    predicted: dict[Hashable, float] = field(default_factory=dict)           # id -> median ms
    predictor: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    tune: dict[str, Any] | None = None                                         # --tune's choice

    @property
    def records(self) -> dict[Hashable, dict[str, Any]]:
        return {**self.cached, **self.measured}

    def to_dict(self) -> dict[str, Any]:
        return {"store": str(self.store), "target": self.target, "env_hash": self.env_hash,
                "measured": sorted(map(str, self.measured)), "cached": sorted(map(str, self.cached)),
                "predicted": {str(k): v for k, v in self.predicted.items()},
                "predictor": self.predictor, "warnings": self.warnings,
                "tune": None if self.tune is None else {k: self.tune.get(k) for k in
                                                        ("choice", "choice_meets_goal", "stitches", "note")}}


def _load_runner(backend: str, path: str, target_ref: str, session: dict | None = None):
    """Top-level (picklable) loader used by the memory worker."""
    from ..backends import get_backend
    from ..targets import load_target
    return load_for_profile(get_backend(backend), Path(path), load_target(target_ref),
                            None if session is None else SessionSettings.from_dict(session))


def load_for_profile(backend: Any, path: Path, target: Any, settings: SessionSettings | None):
    """A runner configured as the bundle runtime will run it (ONNX Runtime: ``settings``)."""
    if settings is not None and getattr(backend, "name", "") == "onnxruntime":
        return backend.load(path, target, settings)
    return backend.load(path, target)


def _pareto_ids(rows: list[dict[str, Any]], lat: dict[Hashable, float]) -> set[Hashable]:
    """Front over (quality max, latency min); quality = accuracy, else FLOPs as a proxy."""
    from ..pareto import pareto_front
    use_acc = all(r.get("accuracy") is not None for r in rows)
    pts = [{"id": r["id"], "q": r["accuracy"] if use_acc else float(r.get("flops") or 0),
            "lat": lat[r["id"]]} for r in rows if r["id"] in lat]
    front, _ = pareto_front(pts, [("q", "max"), ("lat", "min")])
    return set(front)


def profile_compiled(compiled_dir: str | Path, target: Any, store_path: str | Path | None = None,
                     *, stitch_ids: Sequence[Hashable] | None = None, budget: int | None = None,
                     fresh: bool = False, progress: ProgressFn | None = None,
                     min_runs: int | None = None, min_seconds: float | None = None,
                     memory: bool = True, batch_sizes: Sequence[int] | None = None,
                     cv_metric: str | None = None,
                     session: SessionSettings | None = None, tune: bool = False) -> ProfileResult:
    """Measure the compiled stitches of ``compiled_dir`` on this machine (see module doc)."""
    from ..backends import get_backend
    from ..targets import load_target
    from .environment import env_hash, fingerprint

    target = load_target(target) if isinstance(target, (str, Path)) else target
    compiled_dir = Path(compiled_dir)
    comp, export, _ = read_compiled(compiled_dir)
    rows = _rows_to_profile(compiled_dir, comp, export, target, stitch_ids, budget)
    store = ProfileStore(store_path or default_store_path(compiled_dir, target.name))
    backend_name = comp.get("backend") or target.backend
    proto = TimingProtocol.with_overrides(min_runs=min_runs, min_seconds=min_seconds,
                                          cv_metric=cv_metric)
    _check_files(compiled_dir, rows)
    target, session, tuned = _session_for(compiled_dir, target, store, proto, session, tune, progress)
    env = fingerprint(threads=session.threads or None)
    result = ProfileResult(store.path, target.name, env, env_hash(env))
    result.tune = tuned
    run = _Run(compiled_dir, get_backend(backend_name), {r["id"]: r for r in rows}, store, result,
               memory, fresh, progress)
    precision = comp.get("precision") or getattr(target, "precision", None)
    batches = list(batch_sizes or getattr(getattr(target, "shapes", None), "batch_sizes", (1,)))
    for batch in batches:
        ctx = MeasureContext.for_pass(target, backend=backend_name, precision=precision,
                                      batch=batch, shape=input_shape_for(export, comp, batch),
                                      protocol=proto, session=session, env=env,
                                      env_hash=result.env_hash)
        # select reads the predictions of the first batch (it selects at that batch)
        _profile_batch(run, ctx, rows, budget, persist=batch == batches[0])
    result.warnings.extend(_unstable_warnings(result.records.values()))
    _add_front_check(result)
    run.say("done", 1.0, "")
    return result


@dataclass
class _Run:
    """What every batch of one ``profile_compiled`` call shares (the result it fills in)."""

    compiled_dir: Path
    backend: Any
    by_id: dict[Hashable, dict[str, Any]]
    store: ProfileStore
    result: ProfileResult
    memory: bool
    fresh: bool
    progress: ProgressFn | None

    def say(self, phase: str, frac: float, detail: str) -> None:
        if self.progress is not None:
            self.progress(phase, frac, detail)


def _rows_to_profile(compiled_dir: Path, comp: dict, export: dict, target: Any,
                     stitch_ids: Sequence[Hashable] | None, budget: int | None) -> list[dict]:
    """The compile stage's rows to time, after refusing what cannot be profiled here."""
    if comp.get("target") not in (None, target.name):
        raise ProfileError(f"{compiled_dir} was compiled for target {comp.get('target')}, "
                           f"not {target.name}", hint=f"pass --target {comp.get('target')}")
    if comp.get("device_build_required") or comp.get("engines_built") is False:
        raise ProfileError(
            f"the {target.name} engines in {compiled_dir} were not built here (TensorRT plans must "
            f"be built on the device)", hint="copy the folder to the device, run 'esta-export "
            "compile' there, then 'esta-export profile' there (or use --remote user@host)")
    rows = stitch_table(comp, export)
    if stitch_ids is not None:
        wanted = {int(s) for s in stitch_ids}
        unknown = sorted(wanted - {r["id"] for r in rows})
        if unknown:
            raise InputError(f"stitch ids not compiled: {', '.join(map(str, unknown))}",
                             hint="see compile.json for the compiled stitches")
        rows = [r for r in rows if r["id"] in wanted]
    if not rows:
        raise ProfileError(f"no compiled artifacts in {compiled_dir}",
                           hint="re-run 'esta-export compile' (see its 'failed' list)")
    if budget is not None and budget < 1:
        raise InputError("--profile-budget must be at least 1", hint="or leave it out to time all")
    return rows


def _check_files(compiled_dir: Path, rows: list[dict]) -> None:
    missing = [r["id"] for r in rows if not r.get("path") or not (compiled_dir / r["path"]).exists()]
    if missing:
        raise ProfileError(f"artifacts listed in compile.json are missing: stitches "
                           f"{', '.join(map(str, missing[:10]))}",
                           hint="re-run 'esta-export compile --fresh'")


def _session_for(compiled_dir: Path, target: Any, store: ProfileStore, proto: TimingProtocol,
                 session: SessionSettings | None, tune: bool,
                 progress: ProgressFn | None) -> tuple[Any, SessionSettings, dict | None]:
    """The session configuration the bundle runtime will use: 'profile --tune''s choice
    (measured now, or earlier on this machine), else the target's [execution]; recorded in
    every record and keyed into the cache. Returns the target with the choice applied."""
    from .environment import env_hash, fingerprint
    from .tune import apply_choice, tune_session, tuned_choice

    tuned = (tune_session(compiled_dir, target, store.path, progress=progress, protocol=proto) if tune
             else tuned_choice(store.path, target, env_hash(fingerprint())))
    if tuned is not None and session is None:
        target, session = apply_choice(target, tuned["choice"])
        session = session or dataclasses.replace(SessionSettings.from_target(target), source="tuned")
    return target, session or SessionSettings.from_target(target), tuned


def _profile_batch(run: _Run, ctx: MeasureContext, rows: list[dict], budget: int | None,
                   *, persist: bool) -> None:
    """One batch size: reuse what the store holds, then measure_to_front's rounds on this machine."""
    known = {} if run.fresh else _cached(run.store, rows, ctx)
    run.result.cached.update(known)

    def measure(ids: list[Hashable], predicted: dict[Hashable, float]) -> dict[Hashable, dict]:
        if predicted:
            run.say("front", 0.0, f"timing {len(ids)} predicted-front stitches")
        return _measure(run, ctx, ids, predicted)

    rounds = measure_to_front(rows, known, budget, measure)
    run.result.warnings += rounds.warnings
    if rounds.model is not None:
        run.result.predicted.update(rounds.predicted)
        run.result.predictor = {**rounds.predictor, "batch": ctx.batch}
        if persist:
            persist_predictions(run.store.path, ctx.target.name, ctx.batch, run.by_id, known,
                                rounds.predicted, rounds.model, run.result.predictor)


def _cached(store: ProfileStore, rows: list[dict], ctx: MeasureContext) -> dict[Hashable, dict]:
    known = {}
    for r in rows:
        hit = store.lookup(r["sha256"], ctx.env_hash, ctx.settings)
        if hit is not None:
            known[r["id"]] = hit
    return known


@dataclass
class FrontRounds:
    """What :func:`measure_to_front` leaves: the predictions of the stitches never timed."""
    predicted: dict[Hashable, float] = field(default_factory=dict)
    predictor: dict[str, Any] | None = None   # the fit and its leave-one-out error
    model: Any = None
    rounds: list[list[Hashable]] = field(default_factory=list)   # the ids timed, round by round
    warnings: list[str] = field(default_factory=list)


def measure_to_front(rows: list[dict[str, Any]], known: dict[Hashable, dict[str, Any]],
                     budget: int | None,
                     measure: Callable[[list[Hashable], dict[Hashable, float]], dict[Hashable, dict[str, Any]]]
                     ) -> FrontRounds:
    """``--profile-budget``'s rounds, wherever the timing runs (here, or on a device over SSH).

    Time ``budget`` of the stitches not in ``known`` (all of them when ``budget`` is None),
    chosen by the predictor's design; fit the latency model on every record, predict the rest,
    and time for real every stitch on the predicted Pareto front until the front holds only
    measured stitches (at most MAX_FRONT_ROUNDS rounds). ``measure(ids, predicted_ms)`` returns
    the new records by id; ``known`` (id -> record) is updated in place, so a stitch is never
    timed twice."""
    from ..predict import LatencyModel, choose_profile_subset, leave_one_out

    by_id = {r["id"]: r for r in rows}
    out = FrontRounds()
    todo = [r["id"] for r in rows if r["id"] not in known]
    first = (choose_profile_subset(rows, budget, already=list(known))
             if budget is not None and len(todo) > budget else todo)
    if first:
        out.rounds.append(list(first))
        known.update(measure(list(first), {}))
    for _ in range(MAX_FRONT_ROUNDS):
        rest = [r for r in rows if r["id"] not in known]
        if not rest:
            return out
        train = [by_id[i] for i in known]
        measured_ms = [known[i]["latency_ms"]["median"] for i in known]
        model = LatencyModel.fit(train, measured_ms)
        pred = dict(zip([r["id"] for r in rest], map(float, model.predict(rest))))
        lat = {i: known[i]["latency_ms"]["median"] for i in known} | pred
        todo_front = [i for i in _pareto_ids(rows, lat) if i in pred]
        if not todo_front:
            out.predicted, out.model = pred, model
            out.predictor = {"model": model.to_dict(), "leave_one_out": leave_one_out(train, measured_ms).to_dict()}
            return out
        out.rounds.append(todo_front)
        known.update(measure(todo_front, pred))
    out.warnings.append("the predicted Pareto front kept moving; some front stitches "
                        "may still be predicted (raise --profile-budget)")
    return out


def _measure(run: _Run, ctx: MeasureContext, ids: list[Hashable],
             predicted: dict[Hashable, float]) -> dict[Hashable, dict]:
    """Time ``ids`` together in interleaved rounds (energy per stitch on a Jetson), measure
    their peak memory in a worker, append their records to the store; returns them by id."""
    from .environment import TegrastatsSampler

    if not ids:
        return {}
    runners = _load_runners(run, ctx, ids)
    used_threads = {i: (getattr(r, "info", {}) or {}).get("threads") for i, r in runners.items()}
    with TegrastatsSampler() as sampler:
        stats = profile_runners(runners, ctx.shape, protocol=ctx.protocol, progress=run.progress)
        energy = _energy_pass(runners, ctx.shape, ctx.protocol, sampler) if sampler.available else {}
    for r in runners.values():
        close = getattr(r, "close", None)
        if close:
            close()
    runners.clear()
    mem = _peak_memory(run, ctx, ids) if run.memory else {}
    tegra = sampler.summary() if sampler.available else None
    recs = [build_record(ctx, run.by_id[i], stats[i], threads=used_threads[i], mem=mem.get(i),
                         energy=energy.get(i), tegra=tegra, predicted_ms=predicted.get(i))
            for i in ids]
    run.store.append(recs)
    by_sid = {r["stitch_id"]: r for r in recs}
    run.result.measured.update(by_sid)
    return by_sid


def _load_runners(run: _Run, ctx: MeasureContext, ids: list[Hashable]) -> dict[Hashable, Any]:
    runners = {}
    for n, i in enumerate(ids):
        run.say("load", n / len(ids), str(i))
        runners[i] = load_for_profile(run.backend, run.compiled_dir / run.by_id[i]["path"],
                                      ctx.target, ctx.session)
    return runners


def _peak_memory(run: _Run, ctx: MeasureContext, ids: list[Hashable]) -> dict[Hashable, dict]:
    """Peak resident memory of each stitch, each loaded alone in a spawned worker."""
    from .memory import measure_peak_memory

    run.say("memory", 0.0, f"{len(ids)} stitches")
    target_ref = ctx.target.source or ctx.target.name
    return measure_peak_memory(
        {i: (_load_runner, (ctx.backend, str(run.compiled_dir / run.by_id[i]["path"]), target_ref,
                            ctx.session.to_dict())) for i in ids}, ctx.shape)


def _unstable_warnings(records: Any) -> list[str]:
    out = []
    for rec in records:
        if rec.get("unstable"):
            metric = (rec.get("protocol") or {}).get("cv_metric", "cv")
            steal = rec["latency_ms"].get("cpu_steal")
            why = (f"; the hypervisor took {steal:.0%} of the CPU meanwhile (steal time): a shared "
                   "VM, measure on a dedicated machine" if isinstance(steal, (int, float))
                   and steal >= 0.02 else "; quiet the machine and re-profile --fresh")
            out.append(
                f"stitch {rec['stitch_id']} latency is unstable ({metric} "
                f"{rec['latency_ms'].get(metric, rec['latency_ms']['cv']):.1%} after "
                f"{rec.get('attempts', 1)} attempts){why}")
    return out


def _add_front_check(result: ProfileResult) -> None:
    """How well the predictor did on the front stitches it predicted and that were then timed."""
    held = [(r["predicted_before_ms"], r["latency_ms"]["median"]) for r in result.measured.values()
            if r.get("predicted_before_ms")]
    if held and result.predictor is not None:
        ape = [abs(p / m - 1) for p, m in held]
        result.predictor["front_check"] = {
            "n": len(ape), "mape": float(np.mean(ape)), "within_10pct": float(np.mean(
                [a <= 0.1 for a in ape])),
            "method": "front stitches predicted, then measured"}


def persist_predictions(store_path: Path, target: str, batch: int,
                         by_id: dict[Hashable, dict[str, Any]], known: dict[Hashable, dict[str, Any]],
                         pred: dict[Hashable, float], model: Any, predictor: dict[str, Any]) -> None:
    """Write the fit and its predictions beside the store, keyed by artifact sha256, so select
    reads them instead of fitting again (stages.read_predictions)."""
    from ..stages import write_predictions
    write_predictions(store_path, {
        "target": target, "batch": batch,
        "fitted_on": {known[i]["artifact_sha256"]: known[i]["latency_ms"]["median"] for i in known},
        "predicted": {by_id[i]["sha256"]: ms for i, ms in pred.items()},
        "extrapolated": sorted(by_id[i]["sha256"] for i in pred if not model.covers(by_id[i])),
        "predictor": predictor})


def _energy_pass(runners: dict, shape: list[int], proto: TimingProtocol,
                 sampler: Any, seconds: float = 1.0) -> dict[Hashable, dict[str, Any] | None]:
    """On a Jetson: run each stitch alone for a window tegrastats can resolve and integrate
    module input power over it (interleaved rounds cannot attribute energy to one stitch)."""
    from .environment import energy_per_inference_mj

    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    window = max(seconds, 5 * sampler.interval_ms / 1000.0)
    out = {}
    for i, r in runners.items():
        warm_up(r, x, proto.warmup_s, proto.warmup_min)
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < window:
            r.infer(x)
            n += 1
        t1 = time.monotonic()
        time.sleep(2 * sampler.interval_ms / 1000.0)  # let the sample after t1 arrive
        out[i] = energy_per_inference_mj(list(sampler.samples), t0, t1, n)
    return out


# ---------------------------------------------------------------- timing in a clean process


def profile_in_clean_process(compiled_dir: str | Path, target: Any, store_path: str | Path,
                             *, progress: bool = False, **kw: Any) -> ProfileResult:
    """:func:`profile_compiled` in a fresh Python process that imports no torch.

    An application process holds numpy and one runtime. The main job's process also holds torch
    (its OpenMP pool) and the exporter's and validator's sessions; timing there measured the same
    artifacts up to 2.5x slower than a plain loop in a clean process. So the main job times in a
    process like the app's. Same arguments as :func:`profile_compiled` (JSON-able ones).
    """
    import json
    import subprocess
    import sys

    from ..errors import EstaError

    ref = target if isinstance(target, (str, Path)) else (target.source or target.name)
    payload = {"compiled_dir": str(compiled_dir), "target": str(ref), "store": str(store_path),
               "progress": bool(progress), "kw": kw}
    code = "import sys; from esta_export.profiling.compiled import _clean_child; sys.exit(_clean_child())"
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload, default=str),
                          stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ProfileError(f"the profiling process failed: {tail[0]}",
                           hint="run 'esta-export profile' on the compiled folder to see why") from None
    if "error" in out:
        raise EstaError(out["error"])  # already one line with its hint
    def ids(d: dict) -> dict:
        return {int(k) if str(k).lstrip("-").isdigit() else k: v for k, v in d.items()}
    res = ProfileResult(Path(out["store"]), out["target"], out["env"], out["env_hash"],
                        ids(out["measured"]), ids(out["cached"]), ids(out["predicted"]),
                        out.get("predictor"), out.get("warnings", []), out.get("tune"))
    return res


def _clean_child() -> int:
    import json
    import sys

    from ..errors import EstaError

    payload = json.loads(sys.stdin.read())
    say = None
    if payload.get("progress"):
        last = {"phase": None}

        def say(phase: str, frac: float, detail: str) -> None:
            if phase != last["phase"] or frac >= 1.0:
                print(f"  {phase} {detail}".rstrip(), file=sys.stderr, flush=True)
                last["phase"] = phase
    try:
        res = profile_compiled(payload["compiled_dir"], payload["target"], payload["store"],
                               progress=say, **payload["kw"])
    except EstaError as err:
        print(json.dumps({"error": str(err)}))
        return 0
    print(json.dumps({"store": str(res.store), "target": res.target, "env": res.env,
                      "env_hash": res.env_hash, "measured": {str(k): v for k, v in res.measured.items()},
                      "cached": {str(k): v for k, v in res.cached.items()},
                      "predicted": {str(k): v for k, v in res.predicted.items()},
                      "predictor": res.predictor, "warnings": res.warnings, "tune": res.tune},
                     default=str))
    return 0
