"""The main job as a run configuration (Olive-style): the CLI is sugar over a config that can be
printed with ``--dry-run``, saved, and replayed with ``--config``.

Stages, each reading the previous stage's files under OUT (docs/stages.md):
export -> compile -> profile -> select -> report -> bundle. For targets whose engines must be
built on the device (TensorRT off the device), the run stops measuring after compile: it writes
the device build kit and a bundle that carries it, and says which steps must run on the device.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import InputError
from .onnx_export import ExportResult, ExportSettings, export_supernet, parse_stitch_selection
from .progress import info, stage
from .stages import Layout
from .supernet.formats import LoadedSupernet


@dataclass
class RunConfig:
    supernet: str
    target: str = "cpu"
    out: str | None = None
    stitches: str = "all"
    opset: int | None = None
    decompose_layernorm: bool = False
    num_heads: str | None = None
    precision: str | None = None
    calibration: str | None = None
    val_data: str | None = None
    profile_budget: int | None = None
    runs: int | None = None
    seconds: float | None = None
    stability: str = "robust_cv"
    tune: bool | None = None  # None: on for CPU targets (ONNX Runtime, OpenVINO)
    latency_budget_ms: float | None = None
    max_stitches: int | None = None
    min_accuracy: float | None = None
    archive: bool = False
    fresh: bool = False
    ray: str | None = None  # profile on a Ray fleet (profiling/fleet.py) instead of this machine
    # --device: validate and profile on a device over SSH (device_loop.py)
    device: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    device_python: str | None = None
    device_dir: str | None = None

    def resolved_out(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("out") / f"{Path(self.supernet).stem}-{Path(self.target).stem}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunConfig":
        if args.config:
            from .fsutil import read_json_file

            path = Path(args.config)
            data = read_json_file(path, "run configuration", max_bytes=1 << 20,
                                  hint="give a JSON file written by --dry-run")
            known = {f.name for f in fields(cls)}
            if not isinstance(data, dict) or set(data) - known or "supernet" not in data:
                raise InputError(f"run configuration {path} has unknown or missing keys",
                                 hint=f"allowed keys: {sorted(known)}")
            cfg = cls(**data)
            cfg.check(f"run configuration {path}")
            return cfg
        # Given on the command line wins over esta.toml; None, or False for an off-by-default
        # flag, is "not given" (--no-tune's False is given: its default is None).
        given = {f.name: getattr(args, f.name) for f in fields(cls)
                 if getattr(args, f.name, None) is not None
                 and not (getattr(args, f.name) is False and f.default is False)}
        from .project import find_project, load_project

        project = find_project()
        values = load_project(project).values(given.get("target")) if project else {}
        values.update(given)
        if not values.get("supernet"):
            raise InputError("no supernet given", hint="run 'esta-export SUPERNET --target T', or write an "
                             "esta.toml naming it ('esta-export init') and run 'esta-export --target T' there")
        cfg = cls(**values)
        cfg.check(f"the command line and {project}" if project else "the command line")
        return cfg

    def check(self, where: str) -> None:
        """Every field's type and range (a replayed config is a file anyone can edit)."""
        from .validation import Fields

        f = Fields(where, InputError, hint="fix the value (or write a new config with --dry-run)")
        for fl in fields(self):
            v = getattr(self, fl.name)
            kind = str(fl.type).replace(" ", "")
            if v is None:
                if "None" not in kind:
                    raise f.fail(fl.name, "must not be null")
                continue
            lo, hi = _RANGES.get(fl.name, (None, None))
            if kind.startswith("bool"):
                f.bool(v, fl.name)
            elif kind.startswith("int"):
                f.int(v, fl.name, *(_INT_RANGE if lo is None else (lo, hi)))
            elif kind.startswith("float"):
                f.num(v, fl.name, *((0.0, 1e9) if lo is None else (lo, hi)))
                setattr(self, fl.name, float(v))
            elif kind.startswith("str"):
                f.str(v, fl.name, nonempty=fl.name in ("supernet", "target"))
                if fl.name in _CHOICES:
                    f.enum(v, fl.name, _CHOICES[fl.name])
        if self.seconds is not None and self.seconds <= 0:
            raise f.fail("seconds", f"must be > 0, got {self.seconds}")
        if self.latency_budget_ms is not None and self.latency_budget_ms <= 0:
            raise f.fail("latency_budget_ms", f"must be > 0, got {self.latency_budget_ms}")

    def to_json(self) -> dict:
        return asdict(self)

    def device_spec(self):
        from .device_loop import DeviceSpec

        return DeviceSpec(self.device, identity=self.identity, known_hosts=self.known_hosts,
                          python=self.device_python or "python3", dir=self.device_dir)


_INT_RANGE = (0, 1 << 31)
_RANGES: dict[str, tuple] = {"opset": (7, 30), "profile_budget": (1, 1_000_000), "runs": (1, 10_000_000),
                             "seconds": (0.0, 3600.0), "latency_budget_ms": (0.0, 1e9),
                             "max_stitches": (1, 1_000_000), "min_accuracy": (0.0, 1.0)}
_CHOICES = {"stability": ("cv", "trimmed_cv", "robust_cv"), "precision": ("fp32", "fp16", "bf16", "int8")}


def run_export(loaded: LoadedSupernet, out_dir: str | Path, *, stitches: str | None = "all",
               settings: ExportSettings | None = None, fresh: bool = False, quiet: bool = False) -> ExportResult:
    """The export stage with its progress display and one-paragraph summary."""

    n = len(parse_stitch_selection(stitches, loaded.model.space.ids))
    with stage("export + validate", n, quiet) as prog:
        result = export_supernet(loaded, out_dir, stitches=stitches, settings=settings, fresh=fresh,
                                 on_stitch=lambda sid, route, status: prog.advance(f"{sid} {route} {status}"))
    s = result.summary
    ok, failed = s["stitches"], s["failed"]
    ratio = s["weights_bytes"] / max(1, s["unique_param_bytes"])
    worst = max((r.get("max_abs_error", 0.0) for r in ok), default=0.0)
    info(f"export: {len(ok)} stitches in {result.out_dir} ({result.exported} exported, {result.reused} reused, "
         f"{len(failed)} failed) in {result.seconds:.1f} s; weights.bin {s['weights_bytes'] / 1e6:.2f} MB "
         f"({ratio:.3f}x the unique tensors); worst ONNX Runtime vs slice error {worst:.2e}", quiet)
    for f in failed:
        info(f"  left out stitch {f['id']} ({f['route']}): {f['reason']}", False)
    return result


def run_pipeline(args: argparse.Namespace) -> int:
    cfg = RunConfig.from_args(args)
    if cfg.out is None:
        cfg.out = str(cfg.resolved_out())
    if args.dry_run:
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    return execute(cfg, quiet=args.quiet)


def execute(cfg: RunConfig, quiet: bool = False) -> int:
    from .fsutil import check_input_file, check_not_input, check_out_dir, output_lock, prepare_out_dir
    from .supernet.formats import load_supernet
    from .supernet.formats.checks import parse_num_heads
    from .targets import load_target

    t0 = time.perf_counter()
    target = load_target(cfg.target)              # fail on a bad target before any work
    for name, path in (("--calibration", cfg.calibration), ("--val-data", cfg.val_data)):
        if path is not None:
            check_input_file(path, f"{name} file", hint="give an .npz with x (and y)")
    out_path = check_out_dir(cfg.resolved_out())
    check_not_input(out_path, {"the supernet": cfg.supernet, "--calibration": cfg.calibration,
                               "--val-data": cfg.val_data,
                               "the target file": target.source if not _builtin(target) else None},
                    writes=_job_writes)
    if cfg.device:
        _check_device_options(cfg)
    loaded = load_supernet(cfg.supernet, parse_num_heads(cfg.num_heads))
    out = prepare_out_dir(out_path)
    with output_lock(out):
        return _execute(cfg, loaded, target, out, t0, quiet)


def _builtin(target) -> bool:
    return Path(target.source).resolve().parent.name in ("targets", "_targets")


def _job_writes(rel: str) -> bool:
    """Names the main job writes under OUT (an input elsewhere in OUT is left alone)."""
    top = rel.split("/", 1)[0]
    return top in Layout.ENTRIES or top.startswith(".")


def _execute(cfg: RunConfig, loaded: LoadedSupernet, target, out: Path, t0: float, quiet: bool) -> int:
    from .compile import compile_export
    from .fsutil import atomic_write_json
    from .onnx_export import DEFAULT_OPSET

    job = Layout(out)
    atomic_write_json(job.run_config, cfg.to_json())   # replay with --config OUT/run.json
    info(f"supernet {loaded.path.name}: {loaded.source_format}, {len(loaded.model.space)} stitches, heads "
         f"{','.join(map(str, loaded.num_heads))} ({loaded.spec.num_heads_source}); target {target.name} "
         f"({target.backend}, {target.precision}); out {out}", quiet)

    # 1. export, at what the target's runtime accepts
    opset = min(cfg.opset or DEFAULT_OPSET, target.max_opset)
    layernorm = "decomposed" if (cfg.decompose_layernorm or target.layernorm == "decomposed") else "op"
    run_export(loaded, job.export_dir, stitches=cfg.stitches, settings=ExportSettings(opset=opset, layernorm=layernorm),
               fresh=cfg.fresh, quiet=quiet)

    # 2. compile for the target
    compiled_dir = job.compiled_dir(target.name)
    # Validation data doubles as calibration/reference data when only that was given.
    calibration = cfg.calibration or cfg.val_data
    comp = compile_export(job.export_dir, target, compiled_dir, precision=cfg.precision, calibration=calibration,
                          progress=None if quiet else (lambda m: info(f"  {m}")), fresh=cfg.fresh)
    info(f"compile: {len(comp['artifacts'])} artifacts for {target.name} ({comp['backend']}, {comp['precision']}), "
         f"{len(comp['failed'])} left out", quiet)
    for f in comp["failed"]:
        info(f"  left out stitch {f['id']} ({f['route']}): {f['reason']}", False)
    if not comp["artifacts"]:
        raise InputError(f"no stitch compiled and validated for {target.name}", hint="see the reasons above")

    device = None
    if cfg.device:  # validate and profile on the device (and build its engines there)
        from .device_loop import run_on_device

        device = run_on_device(out, target, compiled_dir, cfg.device_spec(), runs=cfg.runs, seconds=cfg.seconds,
                               budget=cfg.profile_budget,
                               note=lambda m: info(m, quiet))
    elif comp.get("device_build_required"):
        bundle = _bundle(out, target.name, cfg, quiet)
        info(f"engines NOT built: {target.name} needs TensorRT on its device. Copy {compiled_dir} to the device "
             f"and follow {compiled_dir / 'README_DEVICE.md'} to build engines there, then profile there "
             f"('esta-export profile --remote'). Bundle with the build kit: {bundle}. "
             f"Not verified on hardware.", False)
        return 0

    # 3. profile (measured latency, on this machine, with the target's runtime)
    # In a clean process (numpy + the runtime, like the app's; this one holds torch), with the
    # session settings tuned on this machine first for CPU targets (profiling/tune.py).
    from .profiling.compiled import profile_in_clean_process
    store = job.profile_store(target.name)
    if device is not None:
        pass  # measured on the device above (device_loop.py)
    elif cfg.ray:
        from .profiling.fleet import profile_fleet
        fleet = profile_fleet(compiled_dir, target, store, cfg.ray, fresh=cfg.fresh, min_runs=cfg.runs,
                              min_seconds=cfg.seconds, progress=None if quiet else (lambda m: info(f"  {m}")))
        info(f"profile: {len(fleet.spread)} stitches measured on {len(fleet.boards)} boards of {cfg.ray} "
             f"({', '.join(b.name for b in fleet.boards)}; left: {', '.join(fleet.left) or 'none'}), "
             f"{len(fleet.cached)} reused from {store}", quiet)
    else:
        tune = cfg.tune if cfg.tune is not None else (
            target.device.kind == "cpu" and target.backend in ("onnxruntime", "openvino"))
        prof = profile_in_clean_process(compiled_dir, target, store, budget=cfg.profile_budget,
                                        fresh=cfg.fresh, min_runs=cfg.runs, min_seconds=cfg.seconds,
                                        cv_metric=cfg.stability, tune=tune, progress=not quiet)
        if prof.tune:
            info(f"session settings tuned on this machine: {prof.tune['choice']}"
                 + (f" ({prof.tune['note']})" if prof.tune.get("note") else ""), quiet)
        info(f"profile: {len(prof.measured)} measured, {len(prof.cached)} reused from {store}, "
             f"{len(prof.predicted)} predicted", quiet)
        for w in prof.warnings:
            info(f"  warning: {w}", quiet)

    # 4. select by measured latency
    from .select import select_compiled
    sel_path = job.selection(target.name)
    sel = select_compiled(compiled_dir, target, store, latency_budget_ms=cfg.latency_budget_ms,
                          max_stitches=cfg.max_stitches, min_accuracy=cfg.min_accuracy,
                          val_data=cfg.val_data, out_path=sel_path,
                          exclude=device.failed if device else None)
    info(f"select: front {sel.get('front')} -> selected {sel.get('selected')} (accuracy: {sel.get('accuracy_source')}; "
         f"Kendall tau FLOPs vs latency {_fmt(sel.get('kendall_tau'))})", quiet)

    # 5. report
    from .report import write_report
    paths = write_report(out, job.report_dir)   # finds every selection and compiled folder under OUT
    info(f"report: {paths['report.html']}", quiet)

    # 6. bundle
    bundle = _bundle(out, target.name, cfg, quiet, device_engines=device.engines if device else None)
    info(f"done in {time.perf_counter() - t0:.0f} s: bundle {bundle}; report {paths['report.html']}"
         + ("" if target.verified_on_hardware else f"; target {target.name} not verified on hardware"), quiet)
    return 0


def _bundle(out: Path, target: str, cfg: RunConfig, quiet: bool, device_engines: Path | None = None) -> Path:
    from .bundle.writer import write_bundle
    path = write_bundle(out, target, Layout(out).bundle_dir(target), archive=cfg.archive,
                        device_engines=device_engines)
    info(f"bundle: {path}", quiet)
    return path


def _check_device_options(cfg: RunConfig) -> None:
    """--device and its files, before any work (a typo must not cost an export)."""
    from .bundle.remote import parse_remote

    if getattr(cfg, "ray", None):
        raise InputError("--device and --ray both given", hint="profile on one device (--device) or on a Ray fleet (--ray)")
    parse_remote(cfg.device)
    if cfg.identity is not None and not Path(cfg.identity).expanduser().is_file():
        raise InputError(f"--identity file not found: {cfg.identity}",
                         hint="give an existing private key, or leave it out to use the ssh client's configuration")
    # --known-hosts may not exist yet: new hosts are added to it on first use (accept-new).
    if cfg.known_hosts is not None and not Path(cfg.known_hosts).expanduser().parent.is_dir():
        raise InputError(f"--known-hosts: folder of {cfg.known_hosts} not found", hint="give a file in an existing folder")
    if cfg.device_python is not None and not cfg.device_python.strip():
        raise InputError("--device-python is empty", hint="e.g. --device-python /usr/bin/python3")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"
