"""The device loop of the main job: ``esta-export SUPERNET --target T --device USER@HOST[:PORT]``.

Export and compile run here; then, over the system ``ssh`` (bundle/remote.py):

1. **stage**: every validated stitch as a bundle (the runtime the app uses, ``esta_runtime``), the
   compile stage's reference inputs and fp32 logits, and the target's gates, in OUT/device/T/stage;
2. **check**: the device's Python has numpy and the target's runtime;
3. **sync**: copy the files the device does not already hold (compared by sha256);
4. **build-engines** (TensorRT targets): the bundle's ``build_engines.py kit.json`` on the device;
5. **validate**: every stitch run there on the reference inputs, gated as the target says;
6. **profile**: the bundle's ``profile_device.py`` on the stitches that passed;
7. **fetch**: the records go into OUT/profiles/T.jsonl (the store select reads), the verdicts to
   OUT/device/T/validation.json, engines built there to OUT/device/T/engines.

Each device step runs detached under ``esta_runtime.device_step`` and leaves its output on the
device under a key made of what it ran on, so a dropped connection or a reboot loses only the
step in flight: the same command resumes (a step still running is waited for, never started
twice). The device needs Python, numpy and its runtime only (no torch, no esta-export).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import InputError
from .fsutil import sha256_bytes
from .runtime.backends import BACKENDS
from .stages import Layout



@dataclass
class DeviceSpec:
    """Where and how to reach the device (command line, esta.toml ``[device]`` or run.json)."""
    address: str
    identity: str | None = None
    known_hosts: str | None = None
    python: str = "python3"
    dir: str | None = None  # work folder on the device (default: esta-export/<supernet>-<target>)


@dataclass
class DeviceResult:
    store: Path
    measured: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    validation: Path | None = None
    engines: Path | None = None
    steps: dict[str, str] = field(default_factory=dict)  # step -> "done", "reused", "skipped"
    rounds: list[list[int]] = field(default_factory=list)  # the stitches each profile round timed
    predicted: dict[int, float] = field(default_factory=dict)  # --profile-budget: never timed
    removed: list[str] = field(default_factory=list)  # stale files the sync removed on the device
    timings: dict[str, float] = field(default_factory=dict)  # host-observed seconds per step, this run


_sha = sha256_bytes   # (one hashing helper: fsutil)


def _gate_engine(backend: str | None) -> str:
    """The engine the device's validate step runs: the device-built engines where the table of
    backends says they are built there, else whatever the bundle runtime picks."""
    spec = BACKENDS.get(backend or "")
    return spec.bundle_runtime if spec is not None and spec.built_on_device else "auto"


def _local_hashes(root: Path) -> dict[str, str]:
    from .runtime.integrity import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                       for part in p.relative_to(root).parts)}


def stage_device_files(out: Path, target, compiled_dir: Path) -> tuple[Path, dict]:
    """OUT/device/T/stage: the bundle of every validated stitch + reference.npz + gates.json.

    Rewritten only when the export or compile summary changed (the bundle's bytes follow from
    them), so a resumed run compares the same files with the device."""
    from .bundle.parts import write_device_reference
    from .bundle.writer import write_bundle
    from .fsutil import atomic_write_json, read_json

    stage = Layout(out).device_dir(target.name) / "stage"
    comp_bytes = (compiled_dir / "compile.json").read_bytes()
    source_key = _sha(comp_bytes + (out / "export" / "export.json").read_bytes())[:16]
    key_file = stage / ".source-key"
    if not ((stage / "bundle" / "manifest.json").is_file() and key_file.is_file()
            and key_file.read_text().strip() == source_key):
        stage.mkdir(parents=True, exist_ok=True)
        mpath = stage / "bundle" / "manifest.json"
        before = mpath.read_bytes() if mpath.is_file() else None
        # no host-side output check here: the validate step runs every stitch on the device against
        # the fp32 reference with the target's gates (the bundle written after select keeps its check)
        write_bundle(None, target.name, stage / "bundle", export_dir=out / "export", compiled_dir=compiled_dir,
                     check_outputs=False)
        if before is not None and _sans_created(before) == _sans_created(mpath.read_bytes()):
            mpath.write_bytes(before)  # same bundle: keep the bytes the device already holds
        compiled = json.loads(comp_bytes)
        ids = [int(s["id"]) for s in read_json(stage / "bundle" / "manifest.json", "bundle manifest")["stitches"]]
        if write_device_reference(stage, compiled, compiled_dir, ids) is None:
            raise InputError(f"{compiled_dir} has no reference.npz to validate on the device",
                             hint="re-run compile --fresh (it writes the reference inputs and fp32 logits)")
        backend = compiled.get("backend")
        atomic_write_json(stage / "gates.json", {
            "precision": compiled.get("precision"),
            "thresholds": (compiled.get("target_spec") or {}).get("validation"),
            "engine": _gate_engine(backend), "target": target.name})
        key_file.write_text(source_key)
    manifest = json.loads((stage / "bundle" / "manifest.json").read_text())
    return stage, manifest


def _sans_created(data: bytes) -> dict:
    try:
        m = json.loads(data)
    except ValueError:
        return {}
    m.pop("created", None)
    return m


def default_remote_dir(manifest: dict, target_name: str) -> str:
    sn = (manifest.get("supernet") or {}).get("sha256") or "supernet"
    return f"esta-export/{target_name}-{str(sn)[:12]}"


def run_on_device(out: Path, target, compiled_dir: Path, spec: DeviceSpec, *, runs: int | None = None,
                  seconds: float | None = None, budget: int | None = None,
                  note: Callable[[str], None] = lambda m: None) -> DeviceResult:
    """Stage, sync, (build,) validate and profile on the device; bring the results back.

    ``budget`` (--profile-budget): the device times that many stitches, then the predicted front
    (profiling/compiled.py's rounds), each round a resumable device step of its own."""
    from .bundle.remote import Device, _with_env_hash
    from .fsutil import atomic_write_json
    from .profiling.store import ProfileStore

    import time

    timings: dict[str, float] = {}
    last = [time.perf_counter()]

    def lap(name: str) -> None:  # host-observed seconds per step (bench_device.py reads them)
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - last[0], 4)
        last[0] = now

    stage, manifest = stage_device_files(out, target, compiled_dir)
    lap("stage")
    backend = (manifest.get("target") or {}).get("backend") or "onnxruntime"
    local = _local_hashes(stage)
    # What the steps below ran on: the bytes shipped (the manifest's own timestamp aside).
    files_key = _sha(json.dumps({k: v for k, v in local.items() if k != "bundle/manifest.json"},
                                sort_keys=True).encode() + json.dumps(manifest.get("files"), sort_keys=True).encode())[:16]
    remote = spec.dir or default_remote_dir(manifest, target.name)
    rq = shlex.quote(remote)
    state_path = stage.parent / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("device") != spec.address or state.get("remote_dir") != remote:
        state = {"device": spec.address, "remote_dir": remote}
    store = Layout(out).profile_store(target.name)
    result = DeviceResult(store=store)

    def save_state() -> None:
        atomic_write_json(state_path, state)

    with Device(spec.address, identity=spec.identity, known_hosts=spec.known_hosts, python=spec.python) as dev:
        py = shlex.quote(spec.python)

        def step(name: str, key: str, cmd: list[str], fix: str) -> bytes:
            line = (f"cd {rq}/bundle && {py} -m esta_runtime.device_step --dir ../.steps --step {name} "
                    f"--key {key} -- {shlex.join(cmd)}")
            return dev.run(line, name, fix=fix)

        # check: numpy and the runtime import with the device's Python (the clearest first failure)
        table = BACKENDS.get(backend)
        module = (table.device_module if table else "") or backend
        install = table.device_install if table else ""
        probe = (f"import sys, numpy, {module}; print(sys.version.split()[0], numpy.__version__, "
                 f"{module}.__version__)")
        try:
            versions = dev.run(f"{py} -c {shlex.quote(probe)}", "check",
                               fix=f"install them for {spec.python} on the device: {install}")
        except Exception as err:
            if "ModuleNotFoundError" in str(err) or "No module named" in str(err):
                from .errors import RemoteError

                missing = str(err).split("No module named", 1)[-1].split(";")[0].strip(" '\"")
                raise RemoteError(f"device {spec.address}, step check: {spec.python} has no module {missing!r}",
                                  hint=f"fix: install it there ({install or 'pip install ' + missing}) "
                                       f"or pass --device-python PATH") from None
            raise
        note(f"device {spec.address}: python, numpy, {module} {versions.decode(errors='replace').split()[-1:]}"
             .replace("['", "").replace("']", ""))

        lap("check")
        # sync: remove what the plan no longer ships (runtime/device_files.py), send what the device lacks
        have = dev.hashes(remote)
        removed = _prune(dev, remote, local, files_key, spec)
        send = [rel for rel, h in local.items() if have.get(rel) != h]
        nbytes = sum((stage / rel).stat().st_size for rel in send)
        dev.push(stage, remote, send)
        result.steps["sync"] = "done" if send or removed else "reused"
        result.removed = removed
        note(f"sync: {len(send)} files ({nbytes / 1e6:.2f} MB) sent to {spec.address}:{remote}, "
             f"{len(local) - len(send)} already there" + (f" (sent: {', '.join(send)})" if 0 < len(send) <= 3 else "")
             + (f"; {len(removed)} stale files removed there" if removed else ""))

        lap("sync")
        # build-engines (TensorRT): on the device, then the plans and verdicts come back
        if manifest["target"].get("device_build_required") or (table is not None and table.built_on_device):
            step("build-engines", files_key, ["python3", "build_engines.py", "kit.json"],
                 fix="the device needs TensorRT's Python bindings and cuda-python (JetPack: apt install "
                     "python3-libnvinfer; pip install cuda-python); see README_DEVICE.md in the bundle. "
                     "Not verified on hardware")
            result.engines = stage.parent / "engines"
            if result.engines.is_dir():  # what an earlier build brought back must not be shipped again
                import shutil

                shutil.rmtree(result.engines)
            lap("build-engines")
            got = dev.pull(f"{remote}/bundle", ["engines", "validation.json"], result.engines, "fetch")
            result.steps["build-engines"] = "done"
            lap("fetch")
            note(f"build-engines: {len([g for g in got if g.endswith('.plan')])} engines built on the device "
                 f"and brought back to {result.engines} (not verified on hardware)")

        # validate: every artifact against the shipped reference with the target's gates
        raw = step("validate", files_key, ["python3", "-m", "esta_runtime.check_bundle", "--bundle", ".",
                                           "--reference", "../reference.npz", "--gates", "../gates.json"],
                   fix=f"run 'cd {remote}/bundle && {spec.python} -m esta_runtime.check_bundle --bundle . "
                       f"--reference ../reference.npz --gates ../gates.json' there to see why")
        validation = _last_json(raw, dev, "validate")
        lap("validate")
        verdicts = {int(k): v for k, v in validation.get("stitches", {}).items()}
        result.validation = stage.parent / "validation.json"
        atomic_write_json(result.validation, {"device": spec.address, "key": files_key, **validation})
        from .runtime.gates import describe_failure

        result.failed = {sid: describe_failure(v) for sid, v in verdicts.items() if not v.get("passed")}
        passed = sorted(sid for sid, v in verdicts.items() if v.get("passed"))
        note(f"validate: {len(passed)} of {len(verdicts)} stitches pass the {manifest['target'].get('precision')} "
             f"gates on {spec.address}" + "".join(f"; stitch {s} fails: {r}" for s, r in sorted(result.failed.items())))
        if not passed:
            raise dev.fail("validate", "no stitch passed validation on the device",
                           "see " + str(result.validation))

        # profile: the bundle's on-device profiler, on what passed, in --profile-budget's rounds
        from .profiling.compiled import persist_predictions, measure_to_front
        from .stages import read_compiled, stitch_table

        comp, export, _ = read_compiled(compiled_dir)
        rows = [r for r in stitch_table(comp, export) if r["id"] in set(passed)]
        extra = (["--runs", str(runs)] if runs else []) + (["--seconds", str(seconds)] if seconds else [])
        # a round's records are in the store when records carrying its key are (never appended twice)
        stored = {(r.get("remote") or {}).get("key") for r in ProfileStore(store).records()} if store.is_file() else set()
        fresh_ids: list[int] = []

        def measure(ids: list, predicted: dict) -> dict:
            ids = sorted(int(i) for i in ids)
            args = ["--stitches", ",".join(map(str, ids)), *extra]
            prof_key = _sha(f"{files_key} {shlex.join(args)}".encode())[:16]
            raw = step("profile", prof_key, ["python3", "profile_device.py", *args],
                       fix=f"run 'cd {remote}/bundle && {spec.python} profile_device.py' there to see why")
            lap("profile")
            records = []
            for line in raw.decode(errors="replace").splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    rec["remote"] = {"device": spec.address, "host": dev.host, "user": dev.user, "port": dev.port,
                                     "remote_dir": remote, "key": prof_key}
                    if predicted.get(rec.get("stitch_id")) is not None:
                        rec["predicted_before_ms"] = predicted[rec["stitch_id"]]
                    records.append(_with_env_hash(rec))
            if sorted(r.get("stitch_id") for r in records) != ids:
                raise dev.fail("profile", f"the profiler returned {len(records)} records for {len(ids)} stitches",
                               f"run 'cd {remote}/bundle && {spec.python} profile_device.py' there to see why")
            if prof_key not in stored:
                ProfileStore(store).append(records)
                stored.add(prof_key)
                fresh_ids.extend(ids)
            result.rounds.append(ids)
            lap("fetch")
            return {r["stitch_id"]: r for r in records}

        known: dict = {}
        rounds = measure_to_front(rows, known, budget, measure)
        lap("predict")
        result.measured = sorted(known)
        result.predicted = dict(rounds.predicted)
        if rounds.model is not None:
            batch = next(iter(known.values())).get("batch", 1)
            persist_predictions(store, target.name, batch, {r["id"]: r for r in rows}, known, rounds.predicted,
                                 rounds.model, {**rounds.predictor, "batch": batch})
        state["profile_rounds"] = result.rounds  # what each round timed (resume recomputes the same)
        save_state()
        result.steps["profile"] = "done" if fresh_ids else "reused"
        how = (f" in {len(result.rounds)} rounds (--profile-budget {budget}: "
               f"{' + '.join(str(len(r)) for r in result.rounds)}), {len(result.predicted)} predicted"
               if budget is not None else "")
        if fresh_ids:
            note(f"profile: {len(fresh_ids)} stitches measured on {spec.address}{how}; records in {store}")
        else:
            note(f"profile: records of {len(result.measured)} stitches measured on {spec.address}{how} already in {store}")
        for w in rounds.warnings:
            note(f"  warning: {w}")
    state["validate"] = files_key
    state["timings"] = result.timings = timings
    save_state()
    return result


# Written on the device by its steps (build_engines.py): cleared when the shipped files change.
DEVICE_OUTPUTS = ["bundle/engines", "bundle/validation.json"]
DEVICE_CACHES = ["bundle/timing.cache"]  # TensorRT's timing cache: valid across builds, kept


def _prune(dev, remote: str, local: dict[str, str], files_key: str, spec: DeviceSpec) -> list[str]:
    """Remove from the device's work folder what the plan no longer ships (stitches dropped,
    an older compile's files) and, when the shipped files changed, what its steps made from the
    old ones. Runs runtime/device_files.py there from its text (standard library only); it
    refuses any path that leaves the folder, and a folder esta-export did not make."""
    import tempfile

    from .runtime import device_files

    script = Path(device_files.__file__).read_text()
    plan = json.dumps({"keep": sorted(local) + DEVICE_CACHES, "outputs": DEVICE_OUTPUTS}).encode()
    with tempfile.TemporaryFile() as buf:
        buf.write(plan)
        buf.seek(0)
        raw = dev.run(f"{shlex.quote(spec.python)} -c {shlex.quote(script)} --root {shlex.quote(remote)} "
                      f"--key {files_key}", "sync", stdin=buf,
                      fix="pass --device-dir naming an empty folder or one esta-export made (it removes "
                          "stale files there, and nothing outside it)")
    return list(_last_json(raw, dev, "sync").get("removed", []))


def _last_json(raw: bytes, dev, step: str) -> dict[str, Any]:
    for line in reversed(raw.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise dev.fail(step, "printed no result", "re-run the same command; if it persists run the step by hand")
