"""One table of backends (runtime/backends.py) and registries that find their own members."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from esta_export import backends as registry
from esta_export.runtime.backends import BACKENDS, runtime_versions
from esta_export.targets import BACKENDS as TARGET_BACKENDS
from esta_export.targets import list_targets, load_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_entry_has_its_module_and_is_read_everywhere(name: str) -> None:
    spec = BACKENDS[name]
    # its module registers a backend under the table's name (runtimes are imported lazily)
    importlib.import_module(f"esta_export.backends.{spec.module}")
    assert registry.get_backend(name).name == name
    assert name in TARGET_BACKENDS and registry.backend_modules()[name] == spec.package
    assert registry.runtime_importable(name) == spec.installed()
    if spec.installed():   # the fingerprint keys the profile cache on the runtime's version
        assert runtime_versions().get(spec.package) == spec.version()
    assert set(spec.precisions) <= {"fp32", "fp16", "bf16", "int8"}


def test_targets_only_ask_what_their_backend_builds() -> None:
    for target in list_targets():
        assert set(target.precisions) <= set(BACKENDS[target.backend].precisions), target.name


def test_a_target_asking_for_a_precision_its_backend_cannot_build(tmp_path: Path) -> None:
    from esta_export.errors import TargetError
    text = (ROOT / "targets" / "cpu.toml").read_text()
    text = re.sub(r"(?m)^precisions = .*$", 'precisions = ["fp32", "fp16"]', text)
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(TargetError, match="cannot be built by the onnxruntime backend"):
        load_target(tmp_path / "t.toml")


def test_registries_list_what_their_package_holds() -> None:
    from esta_export.commands import load_all
    from esta_export.supernet.spaces import space_names

    cmd_files = {p.stem for p in (ROOT / "esta_export" / "commands").glob("*.py")
                 if "@command(" in p.read_text()}
    assert {c for c in load_all()} >= cmd_files and len(load_all()) == len(cmd_files)
    space_files = [p for p in (ROOT / "esta_export" / "supernet" / "spaces").glob("*.py")
                   if "@register_space" in p.read_text() and p.stem != "__init__"]
    assert len(space_names()) == len(space_files)
