"""Every TensorRT name our code uses exists in the real bindings of every TensorRT release the
capability table claims, or is gated off by that table for the releases that lack it.

The wheels (``tensorrt-bindings`` 8.6.1, ``tensorrt-cu12-bindings`` 10.x, about 1 MB each) are
fetched into ``.whl/`` (``.ci/run`` does it; so does this test when they are missing); the test
skips, saying why, only when they cannot be had. ``ESTA_TRT_WHEELS`` points at another folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from esta_export.backends.tensorrt import planned_version
from esta_export.runtime.tensorrt.capabilities import (CAPABILITIES, CHECKED_BINDINGS,
                                                       GUARDED_NAMES, capabilities, version_tuple)
from esta_export.targets import list_targets
from trt_api import Bindings, fetch, find_wheel, names_in_files, trt_names, wanted_versions

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = Path(os.environ.get("ESTA_TRT_WHEELS") or ROOT / ".whl")
# Our TensorRT code: the host backend and the device-side runtime package.
SOURCES = [ROOT / "esta_export" / "backends" / "tensorrt.py",
           *sorted((ROOT / "esta_export" / "runtime" / "tensorrt").glob("*.py"))]


def checked_versions() -> list[tuple[str, tuple[int, int]]]:
    """(bindings version, capability row) for every row and every release a target plans for."""
    pairs = {(v, row) for row, v in CHECKED_BINDINGS.items()}
    for t in list_targets():
        if t.backend != "tensorrt":
            continue
        planned = planned_version(t)
        major, minor = version_tuple(planned)
        row = max(k for k in CAPABILITIES if k <= (major, minor))
        pairs.add((CHECKED_BINDINGS.get((major, minor), f"{major}.{minor}.0"), row))
    return sorted(pairs)


@pytest.fixture(scope="module")
def bindings() -> dict[str, Bindings]:
    versions = sorted({v for v, _ in checked_versions()})
    missing = [v for v in versions if not find_wheel(WHEEL_DIR, v)]
    if missing:
        problems = fetch(WHEEL_DIR, missing, timeout=120)
        if problems:
            pytest.skip(f"TensorRT bindings wheels cannot be had ({'; '.join(problems)}); "
                        f"`pip download --no-deps` them into {WHEEL_DIR}")
    return {v: Bindings(v, find_wheel(WHEEL_DIR, v)) for v in versions}


def _uses():
    return names_in_files(SOURCES)


def test_ci_fetches_the_versions_the_test_checks():
    assert wanted_versions(ROOT) == {v for v, _ in checked_versions()}


def test_every_capability_row_is_checked_against_bindings():
    assert set(CHECKED_BINDINGS) == set(CAPABILITIES)
    for row, version in CHECKED_BINDINGS.items():
        assert capabilities(version) == CAPABILITIES[max(k for k in CAPABILITIES if k <= version_tuple(version))]


def test_the_scanner_finds_our_names():
    """The scan sees names on the module, on objects several calls away, keyword arguments and
    self attributes: if it found nothing, the check below would pass for nothing."""
    names = {u.name for u in _uses()}
    for expected in ("Builder", "BuilderFlag", "FP16", "STRIP_PLAN", "REFIT_IDENTICAL",
                     "OnnxParserRefitter", "refit_from_file", "refit_cuda_engine", "get_missing_weights",
                     "create_network", "parse_from_file", "desc", "set_memory_pool_limit",
                     "build_serialized_network", "deserialize_cuda_engine", "create_execution_context",
                     "get_tensor_name", "num_io_tensors", "set_tensor_address", "execute_async_v3",
                     "set_input_shape", "ignore_mismatch", "__version__", "get_engine_information"):
        assert expected in names, expected
    for ours in ("engine", "runtime", "np", "cudart", "stream", "infer", "_buffer"):
        assert ours not in names, ours  # attributes of our own objects are not TensorRT names


def test_scanner_flags_a_removed_api():
    src = ("import tensorrt as trt\n"
           "def build(network, logger):\n"
           "    builder = trt.Builder(logger)\n"
           "    config = builder.create_builder_config()\n"
           "    config.max_workspace_size = 1 << 30\n"
           "    return builder.build_engine(network, config)\n"
           "def run(ctx: 'trt.IExecutionContext', bindings):\n"
           "    ctx.execute_async_v2(bindings, 0)\n")
    assert {u.name for u in trt_names(src)} == {"Builder", "create_builder_config",
                                                "max_workspace_size", "build_engine", "execute_async_v2"}


def _guard_of(name: str) -> str | None:
    return next((cap for cap, names in GUARDED_NAMES.items() if name in names), None)


@pytest.mark.parametrize("version,row", checked_versions(), ids=lambda p: str(p))
def test_names_exist_or_are_gated(bindings, version, row):
    b = bindings[version]
    caps = CAPABILITIES[row]
    missing = []
    for use in _uses():
        if b.has(use.name):
            continue
        cap = _guard_of(use.name)
        if cap is not None and not caps[cap]:
            continue  # the table says this release lacks it, and the code asks the table first
        missing.append(f"{use.name} ({use.where})")
    assert not missing, f"TensorRT {version} (row {row}) has no " + ", ".join(sorted(set(missing)))


@pytest.mark.parametrize("version,row", checked_versions(), ids=lambda p: str(p))
def test_capability_table_agrees_with_bindings(bindings, version, row):
    """A capability the table grants must have its names in that release's bindings."""
    b = bindings[version]
    for cap, names in GUARDED_NAMES.items():
        if CAPABILITIES[row][cap]:
            assert all(b.has(n) for n in names), (version, cap)
        elif version_tuple(version) == row:  # the row's own release lacks them, as the table says
            assert not all(b.has(n) for n in names), (version, cap)


def test_gated_names_are_used_only_after_asking_the_table():
    uses = [u for u in _uses() if _guard_of(u.name)]
    assert uses
    for u in uses:
        assert f'caps["{_guard_of(u.name)}"]' in (u.function or ""), (
            f"{u.where}: {u.name} needs caps[{_guard_of(u.name)!r}] checked in the same function")
