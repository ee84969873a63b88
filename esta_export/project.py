"""The project file: ``esta.toml`` in the working directory holds the main job's settings.

With one, ``esta-export --target jetson-orin`` (no SUPERNET) runs the whole job: the supernet,
target defaults, the device, validation data and output folder come from the file. Values given
on the command line win over the file; a ``[targets.NAME]`` table wins over the top level for
that target. Relative paths are relative to the file's folder. A malformed file is one error
naming the key (exit status 2); nothing in it is executed.

```toml
supernet = "models/family.safetensors"
target = "jetson-orin"
out = "out/family"
val_data = "data/val.npz"

[device]                      # --device and its options
address = "nvidia@orin.local:22"
identity = "~/.ssh/id_ed25519"

[targets.jetson-orin]         # used when the target is jetson-orin
latency_budget_ms = 8.0
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

PROJECT_FILE = "esta.toml"
MAX_BYTES = 1 << 20

# key -> (type, is a path). The run options a project may set (RunConfig's fields).
RUN_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "supernet": (str, True), "target": (str, False), "out": (str, True), "stitches": (str, False),
    "opset": (int, False), "decompose_layernorm": (bool, False), "num_heads": (str, False),
    "precision": (str, False), "calibration": (str, True), "val_data": (str, True),
    "profile_budget": (int, False), "runs": (int, False), "seconds": ((int, float), False),
    "stability": (str, False), "latency_budget_ms": ((int, float), False),
    "max_stitches": (int, False), "min_accuracy": ((int, float), False), "archive": (bool, False),
    "ray": (str, False), "tune": (bool, False),
}
# [device] keys -> RunConfig field
DEVICE_KEYS: dict[str, tuple[str, bool]] = {
    "address": ("device", False), "identity": ("identity", True), "known_hosts": ("known_hosts", True),
    "python": ("device_python", False), "dir": ("device_dir", False),
}
TARGET_ONLY = ("supernet", "target")  # a [targets.NAME] table cannot rename its own target


@dataclass
class Project:
    path: Path
    top: dict[str, Any] = field(default_factory=dict)          # RunConfig field -> value
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values(self, target: str | None) -> dict[str, Any]:
        """RunConfig fields from the file for ``target`` (the file's own target when None)."""
        vals = dict(self.top)
        name = target or vals.get("target")
        if name is not None:
            vals.update(self.targets.get(Path(str(name)).stem, {}))
        return vals


def find_project(cwd: str | Path | None = None) -> Path | None:
    path = Path(cwd or ".") / PROJECT_FILE
    return path if path.is_file() else None


def load_project(path: str | Path) -> Project:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(f"{path} is larger than {MAX_BYTES >> 10} KiB", hint="a project file is a few lines")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path} is not valid TOML ({err})", hint="fix the line named, or run 'esta-export init' "
                         "in an empty folder to see a valid file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path} ({err})", hint="check the file") from None
    base = path.resolve().parent
    project = Project(path)
    for key, value in data.items():
        if key == "device":
            project.top.update(_device(value, "device", path, base))
        elif key == "targets":
            if not isinstance(value, dict):
                raise _bad(path, "targets", "must be a table of [targets.NAME] tables")
            for name, table in value.items():
                where = f"targets.{name}"
                if not isinstance(table, dict):
                    raise _bad(path, where, "must be a table ([targets.NAME])")
                vals: dict[str, Any] = {}
                for k, v in table.items():
                    if k == "device":
                        vals.update(_device(v, f"{where}.device", path, base))
                    elif k in TARGET_ONLY:
                        raise _bad(path, f"{where}.{k}", f"cannot be set per target; set it at the top of {path.name}")
                    else:
                        vals[k] = _value(k, v, f"{where}.{k}", path, base)
                project.targets[name] = vals
        else:
            project.top[key] = _value(key, value, key, path, base)
    return project


def _bad(path: Path, key: str, what: str) -> InputError:
    return InputError(f"{path}: key '{key}' {what}", hint=f"fix it in {path} (see 'esta-export init')")


def _value(key: str, value: Any, where: str, path: Path, base: Path) -> Any:
    if key not in RUN_KEYS:
        raise _bad(path, where, f"is not a known setting (known: {', '.join(sorted(RUN_KEYS))}, [device], "
                                f"[targets.NAME])")
    typ, is_path = RUN_KEYS[key]
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if key == "stitches" and isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                              for i in value):
        return ",".join(map(str, value))
    if not ok:
        names = {str: "a string", int: "an integer", bool: "true or false", (int, float): "a number"}
        raise _bad(path, where, f"must be {names.get(typ, typ)}, not {type(value).__name__} {value!r}")
    if isinstance(value, str) and not value.strip():
        raise _bad(path, where, "is empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("min_accuracy",) \
            and value <= 0:
        raise _bad(path, where, "must be positive")
    if isinstance(value, float) and value != value:
        raise _bad(path, where, "is NaN")
    return _resolve(value, base) if is_path else value


def _device(value: Any, where: str, path: Path, base: Path) -> dict[str, Any]:
    if isinstance(value, str):  # device = "user@host:port"
        value = {"address": value}
    if not isinstance(value, dict):
        raise _bad(path, where, "must be \"USER@HOST[:PORT]\" or a [device] table")
    out = {}
    for k, v in value.items():
        if k not in DEVICE_KEYS:
            raise _bad(path, f"{where}.{k}", f"is not a device setting (known: {', '.join(DEVICE_KEYS)})")
        if not isinstance(v, str) or not v.strip():
            raise _bad(path, f"{where}.{k}", "must be a non-empty string")
        name, is_path = DEVICE_KEYS[k]
        out[name] = _resolve(v, base) if is_path else v
    if out and "device" not in out:
        raise _bad(path, f"{where}.address", "is missing (USER@HOST[:PORT] of the device)")
    return out


def _resolve(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


TEMPLATE = """\
# esta.toml: the settings of `esta-export` in this folder (written by `esta-export init`).
# With it, `esta-export --target TARGET` (or plain `esta-export run`) runs the whole job:
# export, compile, profile (on the device below, if any), select, report and bundle.
# Anything given on the command line wins over this file. Relative paths are relative to
# this file's folder. Uncomment and edit what you need.

# The supernet to deploy (.safetensors, or an SN-Net / SN-Netv2 .pth checkpoint).
supernet = {supernet}

# Default target (see `esta-export targets`): cpu, jetson-orin, ... or a .toml target file.
target = {target}

# Output folder (default: out/<supernet name>-<target>).
# out = "out/my-family"

# Labelled validation data (.npz with x and y): accuracy of the compiled artifacts decides the front;
# also the calibration data for int8 unless `calibration` is given.
# val_data = "data/val.npz"
# calibration = "data/calib.npz"

# Selection
# latency_budget_ms = 10.0
# max_stitches = 8
# min_accuracy = 0.7

# Profiling: minimum timed runs and seconds per stitch
# runs = 50
# seconds = 2.0

# The device to export, validate and profile on over SSH (the system `ssh`: your ~/.ssh/config,
# agent and keys apply). It needs Python with numpy and the target's runtime only.
# [device]
# address = "nvidia@orin.local:22"      # USER@HOST[:PORT]
# identity = "~/.ssh/id_ed25519"        # default: the ssh client's configuration
# known_hosts = "~/.ssh/known_hosts"    # default: the ssh client's configuration
# python = "python3"                    # the device's interpreter
# dir = "esta-export/my-family"         # work folder on the device (relative to its home)

# Settings for one target only (they win over the ones above when that target runs).
# [targets.jetson-orin]
# precision = "fp16"
# latency_budget_ms = 8.0
# [targets.jetson-orin.device]
# address = "nvidia@orin.local"
"""


def write_template(path: str | Path, supernet: str | None = None, target: str | None = None,
                   force: bool = False) -> Path:
    import json

    from .fsutil import atomic_write_text

    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} already exists", hint="edit it, or pass --force to overwrite it")
    text = TEMPLATE.format(supernet=json.dumps(supernet or "path/to/supernet.safetensors"),
                           target=json.dumps(target or "cpu"))
    if supernet is None:
        text = text.replace("\nsupernet = ", "\n# supernet = ", 1)
    atomic_write_text(path, text)
    load_project(path)  # what we write must read back
    return path
