"""Hardware targets: ``targets/*.toml`` read into typed, frozen objects.

A target names one real deployment: a device, its software stack, its operating point (power
mode, threads, batch and shapes), a backend and a precision. Everything a measurement must be
compared against is in the file, so a profile can say exactly what it measured.

The TOML files ship inside the wheel as ``esta_export/_targets`` (pyproject force-include); in a
source checkout they are read from the top-level ``targets/`` folder. A user may also pass the
path of their own ``.toml`` wherever a target name is accepted.

The schema check is strict: an unknown key, a wrong type or a value outside its allowed set is a
:class:`TargetError` naming the file, the field and what is allowed. This module imports only the
standard library, so ``esta-export targets`` stays light.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pyproject pulls tomli for 3.10
    import tomli as tomllib

from .errors import TargetError
from .runtime.backends import BACKENDS as BACKEND_TABLE

BACKENDS = tuple(BACKEND_TABLE)    # the one table of backends (runtime/backends.py)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
LAYERNORM = ("op", "decomposed")
DEVICE_KINDS = ("cpu", "gpu", "npu", "jetson")
ORT_LEVELS = ("disabled", "basic", "extended", "all")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")

# Which allowed values each enumerated field takes: the schema check quotes them in its errors.
CHOICES: dict[str, tuple[str, ...]] = {
    "backend": BACKENDS, "precision": PRECISIONS, "precisions": PRECISIONS,
    "layernorm": LAYERNORM, "device.kind": DEVICE_KINDS, "ort_optimization": ORT_LEVELS,
    "execution.performance_hint": PERFORMANCE_HINTS,
}


@dataclass(frozen=True)
class Device:
    kind: str
    name: str
    arch: str = "any"
    module: str | None = None
    soc: str | None = None
    compute_capability: str | None = None
    cuda_cores: int | None = None
    tensor_cores: int | None = None
    dla_cores: int | None = None
    cpu_cores: int | None = None
    memory_gb: float | None = None
    memory_bandwidth_gbs: float | None = None
    openvino_device: str | None = None  # "CPU" | "GPU" | "NPU" for the OpenVINO plugin
    # The deployment CPU's instruction sets that int8 exactness depends on (runtime/cpu.py names,
    # e.g. ["avx2", "avx512_vnni"]); absent = unknown, so int8 uses settings exact on any CPU.
    cpu_flags: tuple[str, ...] | None = None
    # The processor vendor the device class means (/proc/cpuinfo vendor_id on x86, the CPU
    # implementer on ARM); records made on another vendor's CPU say they ran on a stand-in.
    cpu_vendor: str | None = None


@dataclass(frozen=True)
class Runtime:
    """Software stack the target was defined for (versions as strings; ranges allowed)."""
    onnxruntime: str | None = None
    openvino: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None
    jetpack: str | None = None
    l4t: str | None = None
    python: str | None = None
    providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class PowerMode:
    id: int
    name: str
    jetson_clocks: bool = False


@dataclass(frozen=True)
class Shapes:
    batch_sizes: tuple[int, ...] = (1,)  # what profiling measures
    batch_min: int = 1                   # TensorRT optimization profile min/opt/max
    batch_opt: int = 1
    batch_max: int = 64
    static: bool = False                 # NPU and DLA need fixed shapes


@dataclass(frozen=True)
class Execution:
    threads: int = 0                  # 0 = the runtime's default
    performance_hint: str = "LATENCY"
    workspace_mb: int | None = None   # TensorRT memory pool limit
    dla_core: int | None = None
    gpu_fallback: bool = False
    builder_optimization_level: int | None = None
    # ONNX Runtime: the bundle runtime shares one copy of each weight across loaded stitches,
    # which needs weight prepacking off. The profiler times sessions configured the same way, so
    # published latencies are what the app sees.
    share_weights: bool = True
    # ONNX Runtime worker threads spinning after each run (off: with several stitches loaded,
    # idle spinning pools steal the CPU from the running one). 'profile --tune' measures both.
    intra_op_spinning: bool = False
    # OpenVINO CPU plugin: pin inference threads to cores (ENABLE_CPU_PINNING). Unset = the
    # plugin's own choice. On a VM whose vCPUs do not run alike, pinning decides which of two
    # speeds a process gets; 'profile --tune' measures both.
    cpu_pinning: bool | None = None


@dataclass(frozen=True)
class Thresholds:
    """Validation tier 3 gates, in one place; a target's ``[validation]`` table overrides them.

    fp32: ``max|out - ref| / max|ref|`` (relative to the logits' scale, stable near zero).
    fp16/bf16: cosine similarity per sample (the minimum over samples) and top-1 agreement.
    int8: top-1 agreement, and with labelled data an accuracy drop in absolute points (0.01 = 1
    point, NNCF's default ``max_drop``).
    """
    fp32_max_rel_error: float = 1e-4
    fp16_min_cosine: float = 0.999
    fp16_min_top1_agreement: float = 0.98
    bf16_min_cosine: float = 0.99
    bf16_min_top1_agreement: float = 0.95
    int8_min_top1_agreement: float = 0.90
    max_accuracy_drop: float = 0.01


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    precision: str
    precisions: tuple[str, ...]
    max_opset: int
    layernorm: str
    device: Device
    verified_on_hardware: bool | str = False  # False, or where tests ran on the device
    # Correctness checked somewhere other than the device (e.g. emulated aarch64): never a latency.
    functional_check: str = ""
    transfers_included: bool = False
    ort_optimization: str = "basic"
    runtime: Runtime = field(default_factory=Runtime)
    power_mode: PowerMode | None = None
    shapes: Shapes = field(default_factory=Shapes)
    execution: Execution = field(default_factory=Execution)
    validation: Thresholds = field(default_factory=Thresholds)
    source: str = ""        # file it was read from (not a TOML key)
    file_sha256: str = ""   # hash of that file: compiled artifacts are keyed by it

    @property
    def verified(self) -> bool:
        return bool(self.verified_on_hardware)

    @property
    def verification(self) -> str:
        v = self.verified_on_hardware
        return f"verified: {v}" if isinstance(v, str) else (
            "verified" if v else "not verified on hardware")

    def resolve_precision(self, precision: str | None) -> str:
        """The precision to compile at: the target's default, or an allowed override."""
        if precision is None:
            return self.precision
        if precision not in self.precisions:
            raise TargetError(f"target {self.name} does not support precision {precision!r}",
                              hint=f"use one of: {', '.join(self.precisions)}")
        return precision

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source"), d.pop("file_sha256")
        return d


_NOT_KEYS = {"source", "file_sha256"}


def _targets_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    # Installed wheel first, then the source checkout's top-level folder.
    return [d for d in (here / "_targets", here.parent / "targets") if d.is_dir()]


def _target_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in reversed(_targets_dirs()):  # earlier dirs win
        files.update({p.stem: p for p in sorted(d.glob("*.toml"))})
    return files


def target_names() -> list[str]:
    return sorted(_target_files())


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name (``jetson-orin``) or a user's ``.toml`` file by path."""
    s = str(name_or_path)
    files = _target_files()
    if s in files:
        path = files[s]
    elif s.endswith(".toml") or Path(s).is_file():
        path = Path(s)
        if not path.is_file():
            raise TargetError(f"target file not found: {path}",
                              hint="give an existing .toml or a built-in name (esta-export targets)")
    else:
        raise TargetError(f"unknown target {s!r}",
                          hint=f"use one of: {', '.join(sorted(files))}, or a path to a .toml file")
    return _read(path)


def list_targets() -> list[Target]:
    return [_read(p) for _, p in sorted(_target_files().items())]


def _read(path: Path) -> Target:
    from .fsutil import check_input_file

    check_input_file(path, "target file", max_bytes=1 << 20, error=TargetError,
                     hint="give a target .toml (see targets/cpu.toml) or a built-in name")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise TargetError(f"target file {path} is not valid TOML ({err})",
                          hint="fix the syntax (see targets/cpu.toml for an example)") from None
    target = _build(Target, data, path, prefix="")
    target = dataclasses.replace(target, source=str(path),
                                 file_sha256=hashlib.sha256(raw).hexdigest())
    _check(target, path)
    return target


def _build(cls: type, data: Any, path: Path, prefix: str) -> Any:
    """Dataclass ``cls`` from a TOML table: unknown keys, missing keys and bad types are errors."""
    if not isinstance(data, dict):
        raise TargetError(f"{path}: [{prefix.rstrip('.')}] must be a table",
                          hint="see targets/cpu.toml for the layout")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_KEYS}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TargetError(f"{path}: unknown key {prefix + unknown[0]!r}",
                          hint=f"allowed keys{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: "
                               f"{', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TargetError(f"{path}: missing key {key}", hint="add it (see targets/cpu.toml)")
            continue
        kwargs[name] = _convert(hints[name], data[name], path, key)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: Path, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        errors = []
        for a in args:
            try:
                return _convert(a, value, path, key)
            except TargetError as err:
                errors.append(err)
        raise errors[-1]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, key + ".")
    if origin is tuple:
        if not isinstance(value, list):
            raise _type_error(path, key, "a list", value)
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_convert(item, v, path, key) for v in value)
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]
    ok = (isinstance(value, tp) and not (tp is int and isinstance(value, bool))) or (
        tp is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise _type_error(path, key, expected, value)
    if tp is float and not math.isfinite(value):
        raise TargetError(f"{path}: {key} = {value} is not a finite number",
                          hint="give a real number (nan and inf are not allowed)")
    if tp is int and not -(1 << 31) < value < (1 << 31):
        raise TargetError(f"{path}: {key} = {value} is out of range",
                          hint="give an integer that fits the setting (see targets/cpu.toml)")
    if tp is str and len(value) > 4096:
        raise TargetError(f"{path}: {key} is too long", hint="shorten it")
    if tp is str and key in CHOICES and value not in CHOICES[key]:
        raise TargetError(f"{path}: {key} = {value!r:.60} is not allowed",
                          hint=f"allowed values: {', '.join(CHOICES[key])}")
    return float(value) if tp is float else value


def _type_error(path: Path, key: str, expected: str, value: Any) -> TargetError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return TargetError(f"{path}: {key} must be {expected}, got {shown}",
                       hint="fix the target file (see targets/cpu.toml)")


def _check(t: Target, path: Path) -> None:
    """Cross-field rules the types cannot say."""
    if t.precision not in t.precisions:
        raise TargetError(f"{path}: precision {t.precision!r} is not in precisions",
                          hint=f"add it to precisions or use one of: {', '.join(t.precisions)}")
    can = BACKEND_TABLE[t.backend].precisions
    cannot = [p for p in t.precisions if p not in can]
    if cannot:
        raise TargetError(f"{path}: precisions {cannot} cannot be built by the {t.backend} backend",
                          hint=f"it builds {', '.join(can)}")
    if not 7 <= t.max_opset <= 30:
        raise TargetError(f"{path}: max_opset = {t.max_opset} is out of range",
                          hint="use the highest ONNX opset the runtime accepts (7-30)")
    s = t.shapes
    if not 1 <= s.batch_min <= s.batch_opt <= s.batch_max:
        raise TargetError(f"{path}: shapes need 1 <= batch_min <= batch_opt <= batch_max",
                          hint=f"got {s.batch_min}, {s.batch_opt}, {s.batch_max}")
    if not s.batch_sizes or any(b < 1 or b > s.batch_max for b in s.batch_sizes):
        raise TargetError(f"{path}: shapes.batch_sizes must lie in 1..batch_max ({s.batch_max})",
                          hint=f"got {list(s.batch_sizes)}")
    if s.static and len(set(s.batch_sizes)) != 1:
        raise TargetError(f"{path}: static shapes allow one batch size",
                          hint="list one value in shapes.batch_sizes")
    if t.execution.dla_core is not None:
        if t.backend != "tensorrt":
            raise TargetError(f"{path}: execution.dla_core needs backend = \"tensorrt\"",
                              hint="remove dla_core or change the backend")
        if not s.static:
            raise TargetError(f"{path}: DLA needs static shapes",
                              hint="set shapes.static = true")
        if t.device.dla_cores is not None and t.execution.dla_core >= t.device.dla_cores:
            raise TargetError(f"{path}: execution.dla_core = {t.execution.dla_core} but the device "
                              f"has {t.device.dla_cores} DLA cores",
                              hint="use a core the device has, or a target without DLA")
    if not 0 <= t.execution.threads <= 1024:
        raise TargetError(f"{path}: execution.threads = {t.execution.threads} is out of range",
                          hint="use 0 (the runtime's default) to 1024")
    _check_ranges(t, path)
    if t.device.cpu_flags is not None:
        _check_cpu_flags(t, path)


def _check_cpu_flags(t: Target, path: Path) -> None:
    from .runtime.cpu import ARM_FLAGS, X86_FLAGS  # stdlib only; loaded when a target declares flags

    allowed = {"x86_64": X86_FLAGS, "aarch64": ARM_FLAGS}.get(t.device.arch, X86_FLAGS + ARM_FLAGS)
    bad = sorted(set(t.device.cpu_flags or ()) - set(allowed))
    if bad:
        raise TargetError(f"{path}: device.cpu_flags has {bad[0]!r}, not a {t.device.arch} flag esta-export "
                          f"knows", hint=f"allowed: {', '.join(allowed)}")


# Ranges of the numeric fields: what a real deployment can have. Values outside them would make a
# runtime allocate or spin without bound, or switch a validation gate off.
_RANGES: dict[str, tuple[float, float]] = {
    "shapes.batch_min": (1, 65536), "shapes.batch_opt": (1, 65536), "shapes.batch_max": (1, 65536),
    "execution.workspace_mb": (1, 1 << 22), "execution.dla_core": (0, 15),
    "execution.builder_optimization_level": (0, 5), "power_mode.id": (0, 1024),
    "device.cuda_cores": (0, 1 << 20), "device.tensor_cores": (0, 1 << 16), "device.dla_cores": (0, 16),
    "device.cpu_cores": (0, 4096), "device.memory_gb": (0, 1 << 16), "device.memory_bandwidth_gbs": (0, 1 << 20),
}
# Validation gates: fractions and relative errors; 0 < x keeps every gate able to fail.
_GATES: dict[str, tuple[float, float]] = {
    "fp32_max_rel_error": (0.0, 1.0), "fp16_min_cosine": (0.0, 1.0), "fp16_min_top1_agreement": (0.0, 1.0),
    "bf16_min_cosine": (0.0, 1.0), "bf16_min_top1_agreement": (0.0, 1.0), "int8_min_top1_agreement": (0.0, 1.0),
    "max_accuracy_drop": (-1.0, 1.0),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def _check_ranges(t: Target, path: Path) -> None:
    # The name becomes a folder (OUT/compiled/<name>, OUT/bundle/<name>): one plain path component.
    if not _NAME.fullmatch(t.name) or ".." in t.name:
        raise TargetError(f"{path}: name = {t.name!r:.80} cannot be used as a folder name",
                          hint="use letters, digits, '-', '_' and '.' only (e.g. name = \"my-board\")")
    for key, (lo, hi) in _RANGES.items():
        obj: Any = t
        for part in key.split("."):
            obj = getattr(obj, part, None) if obj is not None else None
        if obj is not None and not lo <= obj <= hi:
            raise TargetError(f"{path}: {key} = {obj} is out of range", hint=f"use {lo:g}..{hi:g}")
    if any(not 1 <= b <= 65536 for b in t.shapes.batch_sizes) or len(t.shapes.batch_sizes) > 64:
        raise TargetError(f"{path}: shapes.batch_sizes must be at most 64 sizes in 1..65536",
                          hint=f"got {list(t.shapes.batch_sizes)[:8]}")
    for key, (lo, hi) in _GATES.items():
        v = getattr(t.validation, key)
        if not lo < v <= hi:
            raise TargetError(f"{path}: validation.{key} = {v} is out of range",
                              hint=f"use a value in ({lo:g}, {hi:g}] (the default is {getattr(Thresholds, key)})")


def check_graph(target: Target, opset: int | None, layernorm: str | None) -> None:
    """Refuse a graph the target's runtime cannot take (opset too new, LayerNorm op on TRT 8.5)."""
    if opset is not None and opset > target.max_opset:
        raise TargetError(
            f"the export uses ONNX opset {opset} but target {target.name} accepts at most "
            f"{target.max_opset}",
            hint=f"re-export with --target {target.name} (or --opset {target.max_opset})")
    if layernorm == "op" and target.layernorm == "decomposed":
        raise TargetError(
            f"the export uses the LayerNormalization op but target {target.name} needs it "
            f"decomposed", hint=f"re-export with --target {target.name}")
