"""The bad-input corpus (issue 7): every case must end in exit status 2 and ONE line that names the
problem and the fix, with no traceback, nothing executed, nothing written outside the output
folder and no earlier valid output damaged.

Most cases run the real CLI in-process (``esta_export.cli.main``, fd-level capture, so C-level
output and tracebacks are seen too): a subprocess costs seconds of torch import. Cases that need
isolation (pickles that would run code, the zip bomb, a file-size limit, the torch-free bundle app)
run ``python -m esta_export`` / ``python app.py`` in subprocesses, all started at once.

Every case is listed in docs/reliability.md. A case that exposes a bug is marked
``xfail(strict=True, reason="bug: ...")``: CI stays green, the bug stays visible, and the mark must
go once the bug is fixed (strict: an unexpected pass fails the suite).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "corpus"))
import esta_corpus as C  # noqa: E402

ENV = {**{k: v for k, v in os.environ.items() if k != "ESTA_EXPORT_DEBUG"}, "PYTHONPATH": str(ROOT)}
ERROR_PREFIX = "esta-export: error:"
# argparse's own usage errors name the subcommand ("esta-export export: error: ..."): same form.
ERROR_LINE = re.compile(r"^esta-export( [a-z]+)?: error: ")
# A message "names the fix" when it carries a hint (after ';') or tells the user what to do.
FIX = re.compile(r";|\b(use|give|check|choose|re-?run|re-?create|re-?copy|re-?export|re-?profile|upgrade|"
                 r"fix|add|remove|convert|copy|download|free|see|pass|point|run|train|e\.g\.|must|allowed|"
                 r"update)\b", re.I)


# -- the world every case runs against --------------------------------------------------------------
@dataclass
class World:
    work: Path          # everything a case may see; snapshotted before/after
    inp: Path           # inputs (good and bad files)
    out: Path           # the output area: out/export holds an earlier, valid export
    cwd: Path           # the working directory of in-process runs
    supernet: Path      # a valid tiny supernet
    family: Path        # export/, compiled/cpu/, select/cpu.json in the documented formats (torch-free)
    bundle: Path        # a valid bundle written by the bundle stage
    mounts: list[Path] = field(default_factory=list)

    @property
    def export(self) -> Path:
        return self.out / "export"


def run_cli(argv: list, capfd, cwd: Path | None = None) -> tuple[int | None, str, str]:
    """``esta-export ARGV`` in-process; an escaping exception becomes a traceback in stderr."""
    from esta_export.cli import main

    capfd.readouterr()
    old = os.getcwd()
    tb = ""
    try:
        if cwd is not None:
            os.chdir(cwd)
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as err:   # argparse
            rc = err.code if isinstance(err.code, int) else 2
        except BaseException:  # noqa: BLE001 - a bug: record it like the real CLI would show it
            rc, tb = None, traceback.format_exc()
    finally:
        os.chdir(old)
    out, err = capfd.readouterr()
    return rc, out, err + tb


def assert_one_line_error(rc, out: str, err: str, expect: str, prefix: str = ERROR_PREFIX) -> str:
    assert "Traceback" not in out + err, f"traceback:\n{err}"
    assert rc == 2, f"exit status {rc}, stderr:\n{err}\nstdout:\n{out}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # The error is ONE line and the last one. Progress lines printed before the failure (e.g.
    # "supernet x: native, 6 stitches", before a stitch id is checked against the file) may
    # precede it, but no other error or warning may.
    starts = ERROR_LINE.match if prefix == ERROR_PREFIX else (lambda ln: ln.startswith(prefix))
    assert lines and sum(bool(starts(ln)) for ln in lines) == 1, f"expected one error line:\n{err}"
    assert not any(re.search(r"error|warning|exception", ln, re.I) for ln in lines[:-1]), err
    line = lines[-1]
    assert starts(line), line
    assert re.search(expect, line, re.I), f"message does not name the problem ({expect!r}): {line}"
    assert FIX.search(line.split("error:", 1)[1]), f"message does not say what to do: {line}"
    return line


def snapshot(root: Path) -> dict[str, str]:
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for d in dirnames:
            p = Path(dirpath) / d
            snap[p.relative_to(root).as_posix()] = "link:" + os.readlink(p) if p.is_symlink() else "dir"
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                snap[rel] = "link:" + os.readlink(p)
            else:
                snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def assert_untouched(before: dict, after: dict, out_prefix: str = "out/", allow_new_in_out: bool = False) -> None:
    """Nothing outside ``out/`` changed; inside it every earlier entry is unchanged and nothing
    new but folders appeared (unless ``allow_new_in_out``)."""
    outside_b = {k: v for k, v in before.items() if not k.startswith(out_prefix)}
    outside_a = {k: v for k, v in after.items() if not k.startswith(out_prefix)}
    assert outside_a == outside_b, f"written outside the output folder: " \
        f"{sorted(set(outside_a.items()) ^ set(outside_b.items()))[:6]}"
    changed = [k for k, v in before.items() if k.startswith(out_prefix) and after.get(k) != v]
    assert not changed, f"earlier output damaged: {changed[:6]}"
    new = [k for k, v in after.items() if k not in before and v != "dir"]
    if not allow_new_in_out:
        assert not new, f"files written by a failing command: {new[:6]}"


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from fixtures.family import make_family
    from esta_export.bundle.writer import write_bundle
    from esta_export.cli import main

    work = tmp_path_factory.mktemp("corpus")
    inp, out, cwd = work / "in", work / "out", work / "cwd"
    for d in (inp, out, cwd):
        d.mkdir()
    sn = C.tiny_supernet(inp / "good.safetensors")
    assert main(["export", str(sn), "--out", str(out / "export"), "--stitches", "0-1", "-q"]) == 0
    family = make_family(inp / "family")
    bundle = write_bundle(family, "cpu", inp / "bundle")
    (out / "notadir.txt").write_text("an existing file, not a folder\n")
    w = World(work, inp, out, cwd, sn, family, bundle)
    yield w
    for m in w.mounts:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


# -- the CLI cases ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[World], list]      # -> argv (inputs are created under world.inp)
    expect: str                         # regex the error line must match (names the problem)
    bug: str | None = None              # xfail(strict) reason while a known bug stands


def _sn(fn, name: str, *a):
    """A bad supernet made from the good one by ``fn(src, out, *a)``; exported into the earlier export."""
    def build(w: World) -> list:
        path = fn(w.supernet, w.inp / name, *a)
        return ["export", path, "--out", w.export, "--stitches", "0-1"]
    return build


def _spec(name: str, edit):
    def build(w: World) -> list:
        spec = C.spec_json(w.supernet)
        text = edit(spec)
        path = C.with_spec(w.supernet, w.inp / name, text if isinstance(text, str) else json.dumps(text))
        return ["export", path, "--out", w.export]
    return build


def _good(*extra):
    return lambda w: ["export", w.supernet, "--out", w.export, *extra]


def _compile_with_target(toml: str):
    return lambda w: ["compile", w.export, "--target", C.target_file(toml), "--out", w.out / "compiled" / "cpu"]


def _compile_export(name: str, edit):
    def build(w: World) -> list:
        d = C.copy_export_with(w.export, w.inp / name, edit)
        return ["compile", d, "--target", "cpu", "--out", w.out / "compiled" / "cpu"]
    return build


def _compiled_with(name: str, text: str, command: str):
    def build(w: World) -> list:
        d = w.inp / name
        d.mkdir()
        (d / "compile.json").write_text(text)
        if command == "select":
            return ["select", d, "--target", "cpu", "--store", w.inp / "none.jsonl", "--out", w.out / "select" / "cpu.json"]
        return ["profile", d, "--target", "cpu", "--store", w.out / "profiles" / "cpu.jsonl"]
    return build


def _store(name: str, data: bytes):
    def build(w: World) -> list:
        (w.inp / name).write_bytes(data)
        return ["select", w.family / "compiled" / "cpu", "--target", "cpu", "--store", w.inp / name,
                "--out", w.out / "select" / "cpu.json"]
    return build


def _newer_spec(s):
    s["format_version"] = "2.0"
    return s


def _bad_heads(s):
    s["anchors"][0]["num_heads"] = 5
    return s


def _config(name: str, text: str):
    def build(w: World) -> list:
        (w.inp / name).write_text(text)
        return ["run", w.supernet, "--config", w.inp / name]
    return build


REC = {"schema": "esta-export/profile", "schema_version": "1.0", "target": "cpu", "batch": 1}

CASES = [
    # -- supernet files ---------------------------------------------------------------------------
    Case("empty-file", lambda w: ["export", (w.inp / "empty.safetensors").touch() or w.inp / "empty.safetensors",
                                  "--out", w.export], r"empty"),
    Case("truncated-safetensors", _sn(C.truncated, "trunc.safetensors"), r"truncated|damaged|readable"),
    Case("truncated-header", _sn(C.truncated_header, "trunc_head.safetensors"), r"truncated|damaged|readable|neither"),
    Case("corrupted-header", _sn(C.corrupt_header, "corrupt_head.safetensors"), r"damaged|readable"),
    Case("huge-header-length", _sn(C.huge_header_length, "huge_head.safetensors"), r"damaged|readable"),
    Case("offsets-past-end", _sn(C.offsets_past_end, "offsets.safetensors"), r"damaged|readable"),
    Case("another-architecture-safetensors", lambda w: ["export", C.resnet_safetensors(w.inp / "resnet.safetensors"),
                                                        "--out", w.export], r"not an SN-Net|anchors"),
    Case("another-architecture-pth", lambda w: ["export", C.resnet_pth(w.inp / "resnet.pth"), "--out", w.export],
         r"not an SN-Net|anchors"),
    Case("single-vit-no-stitches", lambda w: ["export", C.anchors_without_stitches_pth(w.inp / "vit.pth"),
                                              "--out", w.export], r"stitch|not a DeiT"),
    Case("nan-weights", _sn(C.nonfinite, "nan.safetensors", float("nan")), r"NaN or Inf"),
    Case("inf-weights", _sn(C.nonfinite, "inf.safetensors", float("inf")), r"NaN or Inf"),
    Case("wrong-tensor-shape", _sn(C.wrong_shape, "shape.safetensors"), r"shape"),
    Case("missing-tensor", _sn(C.missing_tensor, "missing.safetensors"), r"missing"),
    Case("integer-tensor", _sn(C.int_tensor, "int.safetensors"), r"dtype"),
    Case("spec-newer-major", _spec("newer.safetensors", _newer_spec), r"newer"),
    Case("spec-not-json", _spec("specjunk.safetensors", lambda s: "{not json"), r"not valid JSON"),
    Case("spec-impossible-heads", _spec("heads.safetensors", _bad_heads), r"num_heads"),
    Case("spec-deeply-nested", _spec("nested.safetensors", lambda s: C.deeply_nested_json()), r"JSON|spec"),
    Case("directory-as-supernet", lambda w: ["export", w.inp, "--out", w.export], r"not a file"),
    Case("missing-supernet", lambda w: ["export", w.inp / "nope.safetensors", "--out", w.export], r"not found"),
    Case("not-a-command", lambda w: ["frobnicate"], r"neither a command"),
    # -- command-line values --------------------------------------------------------------------
    Case("unknown-stitch-id", _good("--stitches", "99"), r"unknown stitch"),
    Case("negative-stitch-id", _good("--stitches", "-3"), r"unknown stitch|--stitches"),
    Case("reversed-range", _good("--stitches", "3-1"), r"--stitches"),
    Case("malformed-stitches", _good("--stitches", "a,b"), r"--stitches"),
    Case("empty-stitches", _good("--stitches", ","), r"selects no stitch"),
    Case("num-heads-malformed", _good("--num-heads", "x"), r"--num-heads"),
    Case("num-heads-wrong-count", _good("--num-heads", "1,2,3"), r"--num-heads"),
    Case("num-heads-not-dividing", _good("--num-heads", "5,5"), r"--num-heads"),
    Case("opset-too-low", _good("--opset", "3"), r"--opset"),
    Case("opset-too-high", _good("--opset", "99"), r"--opset"),
    Case("opset-not-int", _good("--opset", "seventeen"), r"--opset|invalid int"),
    Case("config-not-json", _config("cfg.json", "{nope"), r"run configuration"),
    Case("config-unknown-keys", _config("cfg2.json", '{"supernet": "x", "turbo": 1}'), r"unknown or missing keys"),
    Case("config-alone", lambda w: ["run", "--config", (w.inp / "cfg3.json").write_text("{nope") and w.inp / "cfg3.json"],
         r"run configuration"),
    # -- targets ------------------------------------------------------------------------------------
    Case("target-wrong-types", _compile_with_target("wrong_types.toml"), r"must be"),
    Case("target-unknown-key", _compile_with_target("unknown_key.toml"), r"unknown key"),
    Case("target-unknown-nested-key", _compile_with_target("unknown_nested_key.toml"), r"unknown key"),
    Case("target-missing-keys", _compile_with_target("missing_keys.toml"), r"missing key"),
    Case("target-unknown-backend", _compile_with_target("unknown_backend.toml"), r"backend"),
    Case("target-bad-syntax", _compile_with_target("bad_syntax.toml"), r"not valid TOML"),
    Case("target-precision-not-listed", _compile_with_target("precision_not_listed.toml"), r"precision"),
    Case("target-bad-ranges", _compile_with_target("bad_ranges.toml"), r"batch"),
    Case("target-table-is-value", _compile_with_target("table_is_value.toml"), r"table"),
    Case("target-not-utf8", lambda w: ["compile", w.export, "--target", C.not_utf8_toml(w.inp / "latin.toml"),
                                       "--out", w.out / "compiled" / "cpu"], r"TOML"),
    Case("target-unknown-name", lambda w: ["compile", w.export, "--target", "jetson-orin-turbo",
                                           "--out", w.out / "compiled" / "cpu"], r"unknown target"),
    Case("target-is-directory", lambda w: ["compile", w.export, "--target",
                                           (w.inp / "dir.toml").mkdir() or w.inp / "dir.toml",
                                           "--out", w.out / "compiled" / "cpu"], r"target|folder|directory"),
    # -- stage summaries ---------------------------------------------------------------------------
    Case("export-json-newer-major", _compile_export("export_newer", lambda s: {**s, "schema_version": "2.0"}),
         r"newer"),
    Case("export-json-garbage", _compile_export("export_garbage", lambda s: "\x00garbage{"), r"not valid JSON|export"),
    Case("export-json-deeply-nested", _compile_export("export_nested", lambda s: C.deeply_nested_json()),
         r"JSON|export"),
    Case("compile-json-garbage-select", _compiled_with("comp_garbage", "garbage", "select"), r"not valid JSON"),
    Case("compile-json-garbage-profile", _compiled_with("comp_garbage2", "garbage", "profile"), r"not valid JSON"),
    Case("compile-json-not-object", _compiled_with("comp_list", "[1, 2]", "select"), r"compile"),
    Case("profile-store-binary", _store("binary.jsonl", b"\xff\xfe\x00garbage\n"), r"profile|store|record"),
    Case("profile-store-newer-major", _store("newer.jsonl", (json.dumps({**REC, "schema_version": "9.0"}) + "\n").encode()),
         r"newer"),
    Case("profile-store-foreign", _store("foreign.jsonl", b'{"hello": "world"}\n'), r"not an esta-export profile"),
    Case("profile-record-wrong-types", _store("types.jsonl", (json.dumps({**REC, "artifact_sha256": [1]}) + "\n").encode()),
         r"profile|record"),
    Case("selection-garbage", lambda w: ["bundle", w.family, "--target", "cpu", "--selection",
                                         (w.inp / "sel.json").write_text("{]") and w.inp / "sel.json",
                                         "--out", w.out / "bundle" / "cpu"], r"not valid JSON"),
    # -- the main job (esta-export SUPERNET --target T --out DIR) into the folder of the earlier export
    Case("main-job-unknown-target", lambda w: [w.supernet, "--target", "jetson-orin-turbo", "--out", w.out],
         r"unknown target"),
    Case("main-job-bad-target-file", lambda w: [w.supernet, "--target", C.target_file("unknown_backend.toml"),
                                                "--out", w.out], r"backend"),
    Case("main-job-truncated-supernet", lambda w: [C.truncated(w.supernet, w.inp / "trunc_main.safetensors"),
                                                   "--target", "cpu", "--out", w.out], r"truncated|damaged"),
    Case("main-job-nan-supernet", lambda w: [C.nonfinite(w.supernet, w.inp / "nan_main.safetensors", float("nan")),
                                             "--target", "cpu", "--out", w.out], r"NaN or Inf"),
    # -- output folders -----------------------------------------------------------------------------
    Case("out-is-a-file", _good("--out", "PLACEHOLDER"), r"not a folder"),
    Case("out-empty-string", _good("--out", ""), r"--out|output"),
    Case("out-unwritable-proc", _good("--out", "/proc/esta-export-corpus/out"), r"cannot write|output folder"),
]


def _argv(case: Case, w: World) -> list:
    argv = case.build(w)
    if case.id == "out-is-a-file":     # --out given twice: argparse keeps the last
        argv = [a if a != "PLACEHOLDER" else w.out / "notadir.txt" for a in argv]
    return argv


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason="bug: " + c.bug))
                                  if c.bug else pytest.param(c, id=c.id) for c in CASES])
def test_cli_case(case: Case, world: World, capfd) -> None:
    argv = _argv(case, world)
    before = snapshot(world.work)
    rc, out, err = run_cli(argv, capfd, cwd=world.cwd)
    after = snapshot(world.work)
    assert_one_line_error(rc, out, err, case.expect)
    assert_untouched(before, after)


# -- output folders that need a mount (root) --------------------------------------------------------
def test_read_only_output_folder(world: World, capfd) -> None:
    ro = world.out / "readonly"
    if not _mount_tmpfs(ro, "ro,size=1m"):
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here, and chmod 000 does not stop root")
        ro.mkdir(exist_ok=True)
        ro.chmod(0o500)
    else:
        world.mounts.append(ro)
    before = snapshot(world.work)
    rc, out, err = run_cli(["export", world.supernet, "--out", ro / "export"], capfd)
    assert_one_line_error(rc, out, err, r"cannot write|read-only|output folder")
    assert_untouched(before, snapshot(world.work))


def test_disk_too_small_is_refused_before_writing(world: World, capfd) -> None:
    small = world.out / "small-disk"
    if not _mount_tmpfs(small, "size=64k"):
        pytest.skip("cannot mount a small tmpfs (needs root); the file-size-limit case covers a full disk")
    world.mounts.append(small)
    rc, out, err = run_cli(["export", world.supernet, "--out", small / "export"], capfd)
    assert_one_line_error(rc, out, err, r"needs about .* MB but only")
    assert not (small / "export" / "export.json").exists()


# -- flipped bytes inside tensor data ---------------------------------------------------------------
def test_flipped_tensor_bytes_load_faithfully_or_refuse(world: World, capfd) -> None:
    """The native format has no per-tensor checksum: a flipped byte in tensor data either loads
    (then exactly that one value differs, nothing else) or is refused as NaN/Inf. Never a crash."""
    import torch

    from esta_export.errors import EstaError
    from esta_export.supernet.formats import load_supernet

    good = load_supernet(world.supernet).model.state_dict()
    outcomes = []
    for i, pos in enumerate((0.01, 0.13, 0.37, 0.5, 0.71, 0.9, 0.999)):
        path = C.flip_data_byte(world.supernet, world.inp / f"flip{i}.safetensors", pos)
        try:
            sd = load_supernet(path).model.state_dict()
        except EstaError as err:
            assert "\n" not in str(err)
            outcomes.append("refused")
            continue
        diff = sum(int((sd[k] != good[k]).sum()) for k in good)
        assert diff == 1, f"flip at {pos}: {diff} values differ"
        assert all(bool(torch.isfinite(v).all()) for v in sd.values())
        outcomes.append("loaded")
    # One through the CLI: inspect exits 0 (a valid float) or 2 with one line.
    rc, out, err = run_cli(["inspect", world.inp / "flip3.safetensors"], capfd)
    assert "Traceback" not in out + err
    if rc != 0:
        assert_one_line_error(rc, out, err, r".")
    assert outcomes


# -- bundles and archives (the runtime's API; the bundle app is covered by a subprocess) -------------
def _bundle_copy(w: World, name: str) -> Path:
    dst = w.inp / "bundles" / name
    shutil.copytree(w.bundle, dst)
    return dst


def _manifest_newer(m):
    m["schema_version"] = "2.0"
    return m


def _manifest_escape(m):
    m["files"][0]["path"] = "../../../in/good.safetensors"
    return m


def _first_file(b: Path, suffix: str) -> Path:
    m = json.loads((b / "manifest.json").read_text())
    return b / next(f["path"] for f in m["files"] if f["path"].endswith(suffix))


BUNDLE_CASES = {
    "bundle-flipped-weights-byte": (lambda b: C.flip_byte(_first_file(b, ".bin")), r"sha256|modified"),
    "bundle-flipped-graph-byte": (lambda b: C.flip_byte(_first_file(b, ".onnx")), r"sha256|modified"),
    "bundle-truncated-file": (lambda b: _first_file(b, ".onnx").write_bytes(b"x"), r"bytes|truncated"),
    "bundle-missing-file": (lambda b: _first_file(b, ".onnx").unlink(), r"missing"),
    "manifest-newer-major": (lambda b: C.edit_manifest(b, _manifest_newer), r"newer"),
    "manifest-garbage": (lambda b: C.edit_manifest(b, lambda m: "{garbage"), r"not valid JSON"),
    "manifest-foreign": (lambda b: C.edit_manifest(b, lambda m: {"hello": 1}), r"not an esta-export bundle"),
    "manifest-path-escape": (lambda b: C.edit_manifest(b, _manifest_escape), r"leaves the bundle"),
    "manifest-deeply-nested": (lambda b: C.edit_manifest(b, lambda m: C.deeply_nested_json()), r"JSON"),
}
BUNDLE_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="bug: " + BUNDLE_BUGS[n]))
                                  if n in BUNDLE_BUGS else n for n in BUNDLE_CASES])
def test_bundle_case(name: str, world: World) -> None:
    from esta_export.errors import EstaError
    from esta_export.runtime import Bundle

    damage, expect = BUNDLE_CASES[name]
    b = _bundle_copy(world, name)
    damage(b)
    before = snapshot(world.work)
    with pytest.raises(EstaError) as info:
        Bundle.open(b, verify=True).close()
    msg = str(info.value)
    assert "\n" not in msg and re.search(expect, msg, re.I) and FIX.search(msg), msg
    assert snapshot(world.work) == before


ARCHIVE_CASES = {
    "archive-dotdot": (lambda w, p: C.archive_dotdot(p, "escaped_dotdot.txt"), r"'\.\.'"),
    "archive-absolute": (lambda w, p: C.archive_absolute(p, str(w.work / "escaped_abs.txt")), r"absolute"),
    "archive-symlink-out": (lambda w, p: C.archive_symlink_out(p, str(w.work)), r"symlink"),
    "archive-symlink-relative-out": (lambda w, p: C.archive_symlink_out(p, "../../../../"), r"symlink"),
    "archive-hardlink-out": (lambda w, p: C.archive_hardlink_out(p, "../../in/good.safetensors"), r"hard link"),
    "archive-device": (lambda w, p: C.archive_device(p), r"device"),
    "archive-garbage": (lambda w, p: C.archive_garbage(p), r"not a readable tar"),
}
ARCHIVE_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="bug: " + ARCHIVE_BUGS[n]))
                                  if n in ARCHIVE_BUGS else n for n in ARCHIVE_CASES])
def test_archive_case(name: str, world: World) -> None:
    from esta_export.bundle.archive import extract_archive
    from esta_export.errors import EstaError

    make, expect = ARCHIVE_CASES[name]
    archive = make(world, world.inp / f"{name}.tar.gz")
    dest = world.out / "extracted" / name / "dest"
    before = snapshot(world.work)
    with pytest.raises(EstaError) as info:
        extract_archive(archive, dest)
    msg = str(info.value)
    assert "\n" not in msg and re.search(expect, msg, re.I) and FIX.search(msg), msg
    after = snapshot(world.work)
    assert_untouched(before, after)
    assert not dest.exists() or not any(dest.iterdir())


# -- cases that need a process of their own --------------------------------------------------------
def _ignore_sigxfsz_and_limit(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.fixture(scope="module")
def isolated(world: World) -> dict:
    """Start every isolated case at once; return {case: (rc, stdout, stderr)} and the snapshots."""
    w = world
    marker = w.work / "PWNED"
    cases = {
        "pickle-os-system": (["export", C.pickle_os_system(w.inp / "evil.pth", marker), "--out", w.export], None),
        "torch-zip-os-system": (["export", C.torch_zip_os_system(w.inp / "evil_zip.pth", marker), "--out", w.export], None),
        "pickle-writes-file": (["export", C.pickle_writes_file(w.inp / "evil_write.pth", marker), "--out", w.export], None),
        "zip-bomb": (["export", C.zip_bomb(w.inp / "bomb.pth", expanded_mb=96), "--out", w.export], None),
        "disk-full-mid-write": (["export", w.supernet, "--out", w.out / "diskfull"], _ignore_sigxfsz_and_limit(150_000)),
    }
    bundle_cases = {"app-flipped-byte": lambda b: C.flip_byte(_first_file(b, ".bin")),
                    "app-manifest-newer": lambda b: C.edit_manifest(b, _manifest_newer)}
    apps = {}
    for name, damage in bundle_cases.items():
        b = _bundle_copy(w, name)
        damage(b)
        apps[name] = b / "app.py"
    before = snapshot(w.work)
    procs = {}
    for name, (argv, pre) in cases.items():
        procs[name] = subprocess.Popen([sys.executable, "-m", "esta_export", *map(str, argv)], cwd=w.cwd, env=ENV,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre)
    for name, app in apps.items():
        # The bundle app runs where esta-export is not installed: no PYTHONPATH.
        env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
        procs[name] = subprocess.Popen([sys.executable, str(app), "--runs", "1"], cwd=w.cwd, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[name] = (p.returncode, out, err)
    return {"results": results, "before": before, "after": snapshot(w.work), "marker": marker}


ISOLATED_EXPECT = {
    "pickle-os-system": r"refused without running|Python objects",
    "torch-zip-os-system": r"refused without running|Python objects",
    "pickle-writes-file": r"refused without running|Python objects",
    "zip-bomb": r"zip bomb",
    "disk-full-mid-write": r"File too large|No space|free space",
    "app-flipped-byte": r"sha256|modified",
    "app-manifest-newer": r"newer",
}


@pytest.mark.parametrize("name", list(ISOLATED_EXPECT))
def test_isolated_case(name: str, isolated: dict) -> None:
    rc, out, err = isolated["results"][name]
    prefix = "app: error:" if name.startswith("app-") else ERROR_PREFIX
    assert_one_line_error(rc, out, err, ISOLATED_EXPECT[name], prefix=prefix)
    assert not isolated["marker"].exists() and not Path(str(isolated["marker"]) + ".open").exists(), \
        "a pickle ran code"


def test_isolated_cases_touched_nothing_outside(isolated: dict, world: World) -> None:
    # The disk-full export writes into its own fresh folder (out/diskfull): allowed, but it must
    # not look finished.
    assert_untouched(isolated["before"], isolated["after"], allow_new_in_out=True)
    new = {k for k in isolated["after"] if k not in isolated["before"] and isolated["after"][k] != "dir"}
    assert all(k.startswith("out/diskfull/") for k in new), sorted(new)
    assert "out/diskfull/export.json" not in isolated["after"]
    assert not any(".tmp" in k for k in new), f"temporary files left behind: {sorted(new)}"


def test_disk_full_resumes_when_space_is_back(isolated: dict, world: World, capfd) -> None:
    """After the full-disk failure, the same command completes and the export validates."""
    from esta_export.onnx_export import load_export

    rc, out, err = run_cli(["export", world.supernet, "--out", world.out / "diskfull", "-q"], capfd)
    assert rc == 0, err
    summary = load_export(world.out / "diskfull")
    assert len(summary["stitches"]) == 6 and not summary["failed"]


# -- last: the earlier valid export survived every case above ------------------------------------------
def test_earlier_export_still_loads(world: World) -> None:
    import numpy as np
    import onnxruntime as ort

    from esta_export.fsutil import sha256_file
    from esta_export.onnx_export import load_export

    summary = load_export(world.export)
    assert [s["id"] for s in summary["stitches"]] == [0, 1]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for s in summary["stitches"]:
        path = world.export / s["onnx"]
        assert sha256_file(path) == s["onnx_sha256"]
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        assert y.shape == (1, 10) and np.isfinite(y).all()
