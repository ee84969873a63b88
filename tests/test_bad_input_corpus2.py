"""The second bad-input corpus (issue 16): hostile and careless inputs an independent pass found.

Every case ends in ONE line with exit status 2 (or in a correct result), with no traceback, nothing
written outside the output folder, no earlier output damaged and no hang. The classes:

- data loss and damaged earlier output (a stage that fails keeps the previous complete output);
- writing outside the output folder (names and paths from files are confined);
- hangs (special files, unbounded numbers);
- silently wrong results (NaN, labels out of range, cross-file disagreements);
- tracebacks where one line belongs (wrong types in every file kind, the runtime API, the app);
- misleading messages.

The one-line contract and the snapshots come from the first corpus (tests/test_bad_input_corpus.py).
Cases are listed in docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "corpus"))
sys.path.insert(0, str(ROOT / "tests"))
import esta_corpus as C  # noqa: E402
from test_bad_input_corpus import (ENV, FIX, assert_one_line_error, assert_untouched, run_cli,  # noqa: E402
                                   snapshot)


@dataclass
class World:
    work: Path
    inp: Path
    out: Path           # out/export (stitches 0-1), out/compiled/cpu: earlier, valid outputs
    cwd: Path
    supernet: Path
    bundle: Path        # a real bundle of the tiny family (inp/bundle)

    @property
    def export(self) -> Path:
        return self.out / "export"

    @property
    def compiled(self) -> Path:
        return self.out / "compiled" / "cpu"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from esta_export.bundle.writer import write_bundle
    from esta_export.cli import main

    work = tmp_path_factory.mktemp("corpus2")
    inp, out, cwd = work / "in", work / "out", work / "cwd"
    for d in (inp, out, cwd):
        d.mkdir()
    sn = C.tiny_supernet(inp / "good.safetensors")
    assert main(["export", str(sn), "--out", str(out / "export"), "--stitches", "0-1", "-q"]) == 0
    assert main(["compile", str(out / "export"), "--target", "cpu", "--out", str(out / "compiled" / "cpu"),
                 "--samples", "8"]) == 0
    assert main(["profile", str(out / "compiled" / "cpu"), "--target", "cpu", "--runs", "3", "--seconds", "0.01",
                 "--no-memory", "--store", str(inp / "cpu.jsonl")]) == 0
    assert main(["select", str(out / "compiled" / "cpu"), "--target", "cpu", "--store", str(inp / "cpu.jsonl"),
                 "--out", str(inp / "select-cpu.json")]) == 0
    bundle = write_bundle(out, "cpu", inp / "bundle")
    return World(work, inp, out, cwd, sn, bundle)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[World], list]
    expect: str
    not_expect: str | None = None      # a wrong hint the line must not give


def _spec(name: str, edit):
    def build(w: World) -> list:
        spec = C.spec_json(w.supernet)
        edit(spec)
        return ["export", C.with_spec(w.supernet, w.inp / name, json.dumps(spec)), "--out", w.export]
    return build


def _set(path: str, value):
    """An edit that sets ``a.b[0].c`` in a JSON document."""
    def edit(doc):
        *parents, last = re.findall(r"[^.\[\]]+", path)
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[int(last) if isinstance(node, list) else last] = value
        return doc
    return edit


def _toml(name: str, text: str) -> Callable[[World], Path]:
    def make(w: World) -> Path:
        src = (ROOT / "targets" / "cpu.toml").read_text()
        path = w.inp / name
        path.write_text(text(src))
        return path
    return make


def _target_case(name: str, text) -> Callable[[World], list]:
    return lambda w: ["compile", w.export, "--target", _toml(name, text)(w), "--out", w.compiled]


def _config(name: str, data: dict):
    def build(w: World) -> list:
        path = w.inp / name
        path.write_text(json.dumps({"supernet": str(w.supernet), **data}))
        return ["run", "--config", path, "--dry-run"]
    return build


def _fifo(w: World, name: str) -> Path:
    # Outside the snapshotted sandbox: hashing a FIFO would block the snapshot itself.
    d = w.work.parent / f"{w.work.name}-fifos"
    d.mkdir(exist_ok=True)
    path = d / name
    if not path.exists():
        os.mkfifo(path)
    return path


def _npz(w: World, name: str, **arrays) -> Path:
    path = w.inp / name
    np.savez(path, **arrays)
    return path


def _x(n: int = 4, fill: float | None = None) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
    if fill is not None:
        x[:] = fill
    return x


def _name_line(text: str, name: str) -> Callable[[str], str]:
    return lambda src: re.sub(r'(?m)^name = .*$', f'name = {json.dumps(name)}', src, count=1)


def _in_own_folder(w: World, name: str) -> Path:
    """The supernet, under a name the export writes, in the folder it is exported to."""
    d = w.out / "selfexport"
    d.mkdir(exist_ok=True)
    shutil.copy(w.supernet, d / name)
    return d / name


def _snnet(w: World, name: str, change) -> Path:
    """An SN-Net v1 style checkpoint ({'model': state, 'args': ...}) made from the tiny supernet."""
    import torch
    from safetensors.torch import load_file

    state = {k: v.clone() for k, v in load_file(str(w.supernet)).items()}
    obj = {"model": state, "args": None}
    change(obj)
    path = w.inp / name
    torch.save(obj, path)
    return path


def _rank(key: str):
    def change(obj):
        import torch
        obj["model"][key] = torch.zeros(4)
    return change


CASES = [
    # -- data loss / damaged earlier output ---------------------------------------------------------
    Case("export-supernet-named-weights-bin", lambda w: ["export", _in_own_folder(w, "weights.bin"), "--out",
                                                         w.out / "selfexport"], r"would overwrite the supernet"),
    Case("export-supernet-named-stitch-graph", lambda w: ["export", _in_own_folder(w, "stitch_000.onnx"), "--out",
                                                          w.out / "selfexport"], r"would overwrite the supernet"),
    Case("compile-zero-calibration-samples-keeps-compile",
         lambda w: ["compile", w.export, "--target", "cpu", "--out", w.compiled, "--calibration",
                    _npz(w, "zero.npz", x=np.zeros((0, 3, 32, 32), np.float32))], r"no samples"),
    Case("out-is-an-input-folder",
         lambda w: ["compile", w.export, "--target", "cpu", "--out", w.export], r"is also the export folder"),
    Case("compile-out-over-calibration",
         lambda w: ["compile", w.export, "--target", "cpu", "--out", w.inp,
                    "--calibration", _npz(w, "calib_in_out.npz", x=_x())], r"would overwrite --calibration"),
    # -- writing outside the output folder ----------------------------------------------------------
    Case("target-name-dotdot", lambda w: [w.supernet, "--target", _toml("escape.toml", _name_line("", "../../escaped-target"))(w),
                                          "--out", w.out], r"cannot be used as a folder name"),
    Case("target-name-absolute", lambda w: [w.supernet, "--target", _toml("abs.toml", _name_line("", str(w.work / "abs")))(w),
                                            "--out", w.out], r"cannot be used as a folder name"),
    Case("out-root", lambda w: ["export", w.supernet, "--out", "/"], r"system folder"),
    Case("main-job-out-root", lambda w: [w.supernet, "--target", "cpu", "--out", "/"], r"system folder"),
    Case("out-etc", lambda w: ["export", w.supernet, "--out", "/etc/esta-export-corpus"], r"system folder"),
    # -- hangs ---------------------------------------------------------------------------------------
    Case("profile-seconds-nan", lambda w: ["profile", w.compiled, "--target", "cpu", "--seconds", "nan"], r"--seconds"),
    Case("profile-seconds-inf", lambda w: ["profile", w.compiled, "--target", "cpu", "--seconds", "inf"], r"--seconds"),
    Case("profile-runs-huge", lambda w: ["profile", w.compiled, "--target", "cpu", "--runs", "99999999999"], r"--runs"),
    Case("calibration-fifo", lambda w: ["compile", w.export, "--target", "cpu", "--out", w.compiled,
                                        "--calibration", _fifo(w, "calib.npz")], r"FIFO"),
    Case("main-job-calibration-fifo", lambda w: [w.supernet, "--target", "cpu", "--out", w.out,
                                                 "--calibration", _fifo(w, "calib2.npz")], r"FIFO"),
    Case("train-data-fifo", lambda w: ["train", w.supernet, "--data", _fifo(w, "train.npz"), "--out",
                                       w.out / "trained.safetensors"], r"FIFO"),
    Case("select-out-in-root", lambda w: ["select", w.compiled, "--target", "cpu", "--store", w.inp / "cpu.jsonl",
                                          "--out", "/esta-export-corpus.json"], r"system folder"),
    Case("config-dev-zero", lambda w: ["run", "--config", "/dev/zero"], r"device|regular file"),
    Case("target-fifo", lambda w: ["compile", w.export, "--target", _fifo(w, "fifo.toml"), "--out", w.compiled],
         r"FIFO|not found"),
    # -- silently wrong results ----------------------------------------------------------------------
    Case("spec-nan-accuracy", _spec("nanacc.safetensors", _set("training", {"accuracy": {"0": float("nan")}})),
         r"accuracy|NaN"),
    Case("spec-accuracy-above-one", _spec("acc2.safetensors", _set("training", {"accuracy": {"0": 75.0}})),
         r"accuracy"),
    Case("val-data-nan-inputs", lambda w: ["select", w.compiled, "--target", "cpu", "--store", w.inp / "cpu.jsonl",
                                           "--out", w.out / "select" / "cpu.json", "--val-data",
                                           _npz(w, "valnan.npz", x=_x(fill=float("nan")), y=np.zeros(4, np.int64))],
         r"NaN"),
    Case("calibration-labels-out-of-range",
         lambda w: ["compile", w.export, "--target", "cpu-int8", "--out", w.out / "compiled" / "cpu-int8",
                    "--calibration", _npz(w, "lab.npz", x=_x(), y=np.array([0, 1, 2, 99]))], r"outside the model's 10 classes"),
    Case("target-nan-threshold", _target_case("nan_gate.toml", lambda s: s + "\n[validation]\nfp32_max_rel_error = nan\n"),
         r"not a finite number"),
    Case("target-zero-threshold", _target_case("zero_gate.toml", lambda s: s + "\n[validation]\nfp16_min_cosine = 0.0\n"),
         r"out of range"),
    Case("spec-labels-shorter-than-classes", _spec("labels.safetensors",
                                                   _set("input", {"image_size": 32, "labels": ["a", "b"]})), r"labels"),
    Case("spec-image-size-vs-anchors", _spec("imgsize.safetensors", _set("input", {"image_size": 64})), r"image_size"),
    # -- tracebacks where one line belongs: the spec ----------------------------------------------------
    Case("spec-accuracy-string", _spec("accs.safetensors", _set("training", {"accuracy": "high"})), r"accuracy"),
    Case("spec-accuracy-list", _spec("accl.safetensors", _set("training", {"accuracy": [0.5]})), r"accuracy"),
    Case("spec-importance-string", _spec("imps.safetensors", _set("training", {"importance": {"0": "x"}})), r"importance"),
    Case("spec-space-param-string", _spec("sps.safetensors", _set("space.params", {"kernel_size": "2"})), r"kernel_size"),
    Case("spec-space-param-float", _spec("spf.safetensors", _set("space.params", {"kernel_size": 2.5})), r"kernel_size"),
    Case("spec-unknown-space", _spec("spn.safetensors", _set("space.name", "snnet_v9")), r"stitch space"),
    Case("spec-huge-embed-dim", _spec("huge.safetensors", lambda s: [a.update(embed_dim=16384, num_heads=16)
                                                                   for a in s["anchors"]]), r"parameters"),
    # -- run configurations -------------------------------------------------------------------------------
    Case("config-stitches-int", _config("c1.json", {"stitches": 3}), r"stitches"),
    Case("config-runs-string", _config("c2.json", {"runs": "many"}), r"runs"),
    Case("config-supernet-list", lambda w: ["run", "--config", (w.inp / "c3.json").write_text('{"supernet": ["a"]}')
                                            and w.inp / "c3.json", "--dry-run"], r"supernet"),
    Case("config-seconds-negative", _config("c4.json", {"seconds": -1}), r"seconds"),
    Case("config-precision-unknown", _config("c5.json", {"precision": "fp4"}), r"precision"),
    Case("config-huge", lambda w: ["run", "--config", (w.inp / "c6.json").write_text(" " * (2 << 20) + "{}")
                                   and w.inp / "c6.json"], r"MB"),
    # -- SN-Net checkpoints ---------------------------------------------------------------------------------
    Case("snnet-args-not-a-namespace", lambda w: ["export", _snnet(w, "argslist.pth", lambda o: o.update(args=[1, 2])),
                                                  "--stitches", "99", "--out", w.export], r"unknown stitch"),
    Case("snnet-cls-token-rank", lambda w: ["export", _snnet(w, "cls.pth", _rank("anchors.0.cls_token")), "--out", w.export],
         r"cls_token"),
    Case("snnet-pos-embed-rank", lambda w: ["export", _snnet(w, "pos.pth", _rank("anchors.0.pos_embed")), "--out", w.export],
         r"pos_embed"),
    # -- command-line numbers --------------------------------------------------------------------------------
    Case("train-threads-negative", lambda w: ["train", w.supernet, "--data", w.inp, "--out", w.inp / "t.safetensors",
                                              "--threads", "-1"], r"--threads"),
    Case("target-threads-huge", _target_case("threads.toml", lambda s: re.sub(r"(?m)^threads = .*$", "threads = 4294967297", s)
                                             if re.search(r"(?m)^threads = ", s) else s.replace("[execution]", "[execution]\nthreads = 4294967297")),
         r"threads|out of range"),
    Case("compile-samples-huge", lambda w: ["compile", w.export, "--target", "cpu", "--out", w.compiled,
                                            "--samples", "100000000"], r"--samples", not_expect=r"--batch"),
    # -- misleading messages ----------------------------------------------------------------------------------
    Case("select-out-is-folder", lambda w: ["select", w.compiled, "--target", "cpu", "--store", w.inp / "cpu.jsonl",
                                            "--out", w.inp], r"is a folder", not_expect=r"free space"),
    Case("convert-out-is-folder", lambda w: ["convert", w.supernet, (w.inp / "dir.safetensors").mkdir(exist_ok=True)
                                             or w.inp / "dir.safetensors"], r"is a folder", not_expect=r"free space"),
    Case("report-dir-is-file", lambda w: ["report", w.out, "--report-dir", w.supernet], r"not a folder|is a file",
         not_expect=r"free space"),
    Case("bundle-out-is-file", lambda w: ["bundle", w.out, "--target", "cpu", "--out", w.supernet],
         r"not a folder|is a file", not_expect=r"free space"),
]


def _selection(name: str, edit, *, command: str = "bundle"):
    def build(w: World) -> list:
        doc = json.loads((w.inp / "select-cpu.json").read_text())
        edit(doc)
        path = w.inp / name
        path.write_text(json.dumps(doc))
        if command == "report":
            return ["report", "--selection", path, "--compiled", w.compiled, "--report-dir", w.out / "report2"]
        return ["bundle", w.out, "--target", "cpu", "--selection", path, "--out", w.out / "bundle" / "cpu"]
    return build


def _records(name: str, edit):
    def build(w: World) -> list:
        lines = [json.loads(ln) for ln in (w.inp / "cpu.jsonl").read_text().splitlines() if ln.strip()]
        for rec in lines:
            edit(rec)
        path = w.inp / name
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        return ["select", w.compiled, "--target", "cpu", "--store", path, "--out", w.out / "select" / "cpu.json"]
    return build


def _compiled_copy(name: str, edit, command: str):
    def build(w: World) -> list:
        d = w.inp / name
        if not d.exists():
            shutil.copytree(w.compiled, d)
            doc = json.loads((d / "compile.json").read_text())
            edit(doc)
            (d / "compile.json").write_text(json.dumps(doc))
            doc["export"] = os.path.relpath(w.export, d)
            (d / "compile.json").write_text(json.dumps(doc))
        if command == "profile":
            return ["profile", d, "--target", "cpu", "--store", w.out / "profiles" / "cpu.jsonl", "--runs", "1"]
        if command == "bundle":
            return ["bundle", "--export", w.export, "--compiled", d, "--target", "cpu", "--out", w.out / "bundle" / "x"]
        return ["select", d, "--target", "cpu", "--store", w.inp / "cpu.jsonl", "--out", w.out / "select" / "cpu.json"]
    return build


def _first_art(doc, **change):
    doc["artifacts"][0].update(change)


def _other_export(w: World) -> Path:
    """An export of another supernet (20 classes), for a bundle that mixes it with this compile."""
    import torch

    from esta_export.cli import main
    from esta_export.supernet import AnchorConfig, Supernet, SupernetSpec
    from esta_export.supernet.formats import save_supernet

    d = w.work.parent / f"{w.work.name}-other"
    if not (d / "export" / "export.json").is_file():
        d.mkdir(exist_ok=True)
        anchors = tuple(AnchorConfig(n, wd, 2, max(1, wd // 16), img_size=32, patch_size=8, num_classes=20)
                        for n, wd in (("Ti", 32), ("S", 48)))
        torch.manual_seed(0)
        sn = save_supernet(Supernet(SupernetSpec(anchors, "snnet_v1")).eval(), d / "other.safetensors")
        assert main(["export", str(sn), "--out", str(d / "export"), "--stitches", "0-1", "-q"]) == 0
    return d / "export"


STAGE_CASES = [
    # -- selections (bundle and report read them) -----------------------------------------------------
    Case("selection-selected-string", _selection("s1.json", _set("selected", "1,2")), r"selected"),
    Case("selection-selected-null", _selection("s2.json", _set("selected", None)), r"selected"),
    Case("selection-selected-nested", _selection("s3.json", _set("selected", [[1]])), r"selected"),
    Case("selection-other-target", _selection("s4.json", _set("target", "jetson-orin")), r"target"),
    Case("selection-nan-latency", _selection("s5.json", lambda d: d["stitches"][0].update(latency=float("nan"))),
         r"NaN|latency|JSON"),
    Case("report-selection-garbage-type", _selection("s6.json", _set("stitches", "all"), command="report"),
         r"stitches"),
    # -- profile records ------------------------------------------------------------------------------------
    Case("records-median-nan", _records("r1.jsonl", lambda r: r["latency_ms"].update(median=float("nan"))),
         r"median|NaN|record"),
    Case("records-median-string", _records("r2.jsonl", lambda r: r["latency_ms"].update(median="fast")),
         r"median|record"),
    Case("records-median-list", _records("r3.jsonl", lambda r: r["latency_ms"].update(median=[1.0])),
         r"median|record"),
    # -- compile summaries ------------------------------------------------------------------------------------
    Case("compile-artifacts-object", _compiled_copy("cobj", lambda d: d.update(artifacts={"0": {}}), "select"),
         r"artifacts"),
    Case("compile-artifact-path-dotdot", _compiled_copy("cdot", lambda d: _first_art(d, path="../../in/good.safetensors"),
                                                        "profile"), r"path|leaves|\.\."),
    Case("compile-artifact-path-absolute", _compiled_copy("cabs", lambda d: _first_art(d, path="/etc/passwd"),
                                                          "bundle"), r"path|leaves|absolute"),
    Case("bundle-out-over-compiled", lambda w: ["bundle", w.out, "--target", "cpu", "--out", w.compiled],
         r"is also the compiled folder"),
    Case("bundle-out-root", lambda w: ["bundle", w.out, "--target", "cpu", "--out", "/"], r"system folder"),
    Case("bundle-export-of-another-supernet",
         lambda w: ["bundle", "--export", _other_export(w), "--compiled", w.compiled, "--target", "cpu",
                    "--out", w.out / "bundle" / "mixed"], r"supernet|another|classes"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in STAGE_CASES])
def test_stage_file_case(case: Case, world: World, capfd) -> None:
    argv = case.build(world)
    before = snapshot(world.work)
    rc, out, err = run_cli(argv, capfd, cwd=world.cwd)
    assert_one_line_error(rc, out, err, case.expect)
    assert_untouched(before, snapshot(world.work))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_cli_case(case: Case, world: World, capfd) -> None:
    argv = case.build(world)
    before = snapshot(world.work)
    rc, out, err = run_cli(argv, capfd, cwd=world.cwd)
    after = snapshot(world.work)
    line = assert_one_line_error(rc, out, err, case.expect)
    if case.not_expect:
        assert not re.search(case.not_expect, line), line
    assert_untouched(before, after)
    assert not (world.work.parent / "escaped-target").exists() and not (world.work / "abs").exists()


def test_snnet_args_dict_loads(world: World, capfd, tmp_path: Path) -> None:
    """An SN-Net checkpoint whose training arguments are a dict (not argparse.Namespace) loads."""
    path = _snnet(world, "argsdict.pth", lambda o: o.update(args={"nearest_stitching": True, "lr": 1e-3}))
    rc, out, err = run_cli(["inspect", path], capfd)
    assert rc == 0 and "Traceback" not in err, err


def test_free_space_refusal_keeps_earlier_export(world: World, capfd, monkeypatch) -> None:
    """The free-space check runs before anything changes: export.json stays (it was deleted first)."""
    import esta_export.onnx_export as E
    from esta_export.errors import ResourceError

    def refuse(*a, **k):
        raise ResourceError("this export needs about 999 MB but only 1 MB are free", hint="free disk space")
    monkeypatch.setattr(E, "check_free_space", refuse)
    before = snapshot(world.work)
    rc, out, err = run_cli(["export", world.supernet, "--out", world.export, "--stitches", "0-3"], capfd)
    assert_one_line_error(rc, out, err, r"needs about")
    assert_untouched(before, snapshot(world.work))


def test_failing_compile_keeps_earlier_compile(world: World, capfd, monkeypatch) -> None:
    """A compile that fails part-way (here every stitch's backend raises) leaves the earlier
    complete compile exactly as it was: the new one was written beside it and never swapped in."""
    from esta_export.backends import get_backend

    backend = get_backend("onnxruntime")

    def broken(*a, **k):
        raise RuntimeError("simulated backend failure\nwith a second line")
    monkeypatch.setattr(type(backend), "compile", broken)
    before = snapshot(world.work)
    rc, out, err = run_cli(["compile", world.export, "--target", "cpu", "--out", world.compiled, "--fresh",
                            "--samples", "8"], capfd)
    assert rc == 2 and "Traceback" not in err, err
    assert re.search(r"no stitch compiled .* earlier compile .* is kept", err.splitlines()[-1]), err
    assert_untouched(before, snapshot(world.work))


def test_failing_report_keeps_earlier_report(world: World, capfd, monkeypatch) -> None:
    """A report that fails while writing leaves the earlier complete report exactly as it was."""
    import esta_export.report.html as H

    sel = world.inp / "select-cpu.json"
    rdir = world.out / "report"
    rc, out, err = run_cli(["report", "--selection", sel, "--compiled", world.compiled, "--report-dir", rdir], capfd)
    assert rc == 0, err

    def broken(*a, **k):
        raise OSError(28, "No space left on device", str(rdir / "report.html"))
    monkeypatch.setattr(H, "render_html", broken)
    before = snapshot(world.work)
    rc, out, err = run_cli(["report", "--selection", sel, "--compiled", world.compiled, "--report-dir", rdir], capfd)
    assert_one_line_error(rc, out, err, r"No space|full")
    assert_untouched(before, snapshot(world.work))


def test_stage_output_swaps_only_on_success(tmp_path: Path) -> None:
    from esta_export.fsutil import stage_output, staging_path

    final = tmp_path / "stage"
    final.mkdir()
    (final / "done.json").write_text("old")
    (final / "data.bin").write_text("old data")
    with pytest.raises(RuntimeError):
        with stage_output(final, "done.json", copy=lambda rel: rel == "data.bin") as d:
            assert d != final and (d / "data.bin").read_text() == "old data"
            (d / "data.bin").write_text("new data")           # a copy: the old file is untouched
            (d / "done.json").unlink()
            raise RuntimeError("stage failed")
    assert (final / "done.json").read_text() == "old" and (final / "data.bin").read_text() == "old data"
    assert not staging_path(final).exists()
    with stage_output(final, "done.json") as d:
        (d / "done.json").write_text("new")
    assert (final / "done.json").read_text() == "new" and (final / "data.bin").read_text() == "old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_output_lock_refuses_a_second_writer(tmp_path: Path, monkeypatch) -> None:
    from esta_export.errors import InputError
    from esta_export.fsutil import LOCK_NAME, output_lock

    monkeypatch.setenv("ESTA_EXPORT_LOCK_WAIT", "0.3")
    code = ("import sys, time; sys.path.insert(0, %r)\nfrom esta_export.fsutil import output_lock\n"
            "with output_lock(%r):\n    print('locked', flush=True); time.sleep(30)\n") % (str(ROOT), str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match="another esta-export run is writing"):
            with output_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path):          # the holder died: its lock went with it
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_concurrent_exports_never_interleave(world: World, tmp_path: Path) -> None:
    """Two `export` runs into one --out: the second waits for the first, then reuses its work;
    the result is exactly a clean export (every graph's hash matches its record and its logits
    match the earlier export's)."""
    import onnxruntime as ort

    from esta_export.fsutil import sha256_file
    from esta_export.onnx_export import load_export

    out = tmp_path / "shared"
    env = {**ENV, "ESTA_EXPORT_LOCK_WAIT": "300"}
    argv = [sys.executable, "-m", "esta_export", "export", str(world.supernet), "--out", str(out), "--stitches", "0-1", "-q"]
    procs = [subprocess.Popen(argv, env=env, cwd=world.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for so, se, rc in results:
        assert rc == 0 and "Traceback" not in se, se
    summary = load_export(out)
    ref = load_export(world.export)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for s, r in zip(summary["stitches"], ref["stitches"]):
        assert sha256_file(out / s["onnx"]) == s["onnx_sha256"]
        got = ort.InferenceSession(str(out / s["onnx"]), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        want = ort.InferenceSession(str(world.export / r["onnx"]), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not any(p.name.endswith((".staging", ".lock", ".tmp")) for p in out.iterdir())


def test_deleted_working_directory_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, sys; sys.path.insert(0, %r); os.chdir(%r); os.rmdir(%r)\n"
            "from esta_export.cli import main; sys.exit(main(['export', 'x.safetensors', '--out', 'o']))") % (
        str(ROOT), str(gone), str(gone))
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, r"working directory no longer exists")


def _limit_file_size(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_disk_full_mid_compile_is_one_line_and_keeps_earlier_compile(world: World) -> None:
    """A file-size limit hit part-way through compiling (as on a full disk): one line with the
    right hint, not the runtime's dumps; the earlier complete compile is kept."""
    before = snapshot(world.work)
    r = subprocess.run([sys.executable, "-m", "esta_export", "compile", str(world.export), "--target", "cpu",
                        "--out", str(world.compiled), "--fresh", "--samples", "200"], env=ENV, cwd=world.cwd,
                       capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(60_000))
    line = assert_one_line_error(r.returncode, "", "\n".join(
        ln for ln in r.stderr.splitlines() if not ln.startswith("stitch ")), r"full|File too large|No space")
    assert "free space" in line or "free disk" in line, line
    assert_untouched(before, snapshot(world.work))


# -- the bundle runtime API: BundleError for every bad argument and file --------------------------------
def _copy_bundle(w: World, name: str) -> Path:
    dst = w.inp / "bundles2" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(w.bundle, dst)
    return dst


def _edit_manifest(b: Path, edit) -> None:
    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    (b / "manifest.json").write_text(json.dumps(m))


def _first(m: dict, key: str):
    return m["stitches"][0] if key == "stitch" else next(f for f in m["files"])


def _edit_index(b: Path, edit) -> None:
    p = b / "models" / "weights.json"
    idx = json.loads(p.read_text())
    edit(idx)
    p.write_text(json.dumps(idx) if not isinstance(idx, str) else idx)


MANIFEST_CASES = {
    "manifest-id-string": (lambda m: m["stitches"][0].update(id="abc"), r"stitches\[0\]\.id"),
    "manifest-file-without-sha": (lambda m: m["files"][0].pop("sha256"), r"files\[0\]\.sha256"),
    "manifest-files-string": (lambda m: m.update(files="all of them"), r"'files'"),
    "manifest-stitches-empty": (lambda m: m.update(stitches=[]), r"'stitches'"),
    "manifest-latency-string": (lambda m: m["stitches"][0].update(latency="fast"), r"latency"),
    "manifest-latency-median-string": (lambda m: m["stitches"][0].update(latency={"median": "fast"}), r"latency\.median"),
    "manifest-no-image-size": (lambda m: [m["input"].pop("image_size"), m["input"].pop("shape")], r"image_size"),
    "manifest-image-size-zero": (lambda m: m["input"].update(image_size=0), r"image_size"),
    "manifest-nan-accuracy": (lambda m: m["stitches"][0].update(accuracy=float("nan")), r"NaN|accuracy"),
    "manifest-labels-vs-classes": (lambda m: m["input"].update(labels=["a"]), r"labels"),
}


@pytest.mark.parametrize("name", list(MANIFEST_CASES))
def test_manifest_case(name: str, world: World) -> None:
    from esta_export.errors import EstaError
    from esta_export.runtime import Bundle

    edit, expect = MANIFEST_CASES[name]
    b = _copy_bundle(world, name)
    _edit_manifest(b, edit)
    with pytest.raises(EstaError) as info:
        Bundle.open(b, verify=False).close()
    msg = str(info.value)
    assert "\n" not in msg and re.search(expect, msg) and FIX.search(msg), msg


def _tensor0(idx, **change):
    idx["tensors"][0].update(change)


INDEX_CASES = {
    "weights-index-shape": (lambda i: _tensor0(i, shape=[7, 7, 7]), r"shape"),
    "weights-index-dtype": (lambda i: _tensor0(i, dtype="complex256"), r"dtype"),
    "weights-index-offset-past-end": (lambda i: _tensor0(i, offset=1 << 40), r"past the end"),
    "weights-index-bad-tensor-index": (lambda i: next(iter(i["stitches"].values())).update(x=999999), r"tensor"),
    "weights-index-not-json": (lambda i: "{not json", r"not valid JSON"),
}


@pytest.mark.parametrize("name", list(INDEX_CASES))
def test_weights_index_case(name: str, world: World) -> None:
    from esta_export.errors import EstaError
    from esta_export.runtime import Bundle

    edit, expect = INDEX_CASES[name]
    b = _copy_bundle(world, name)
    p = b / "models" / "weights.json"
    idx = json.loads(p.read_text())
    res = edit(idx)
    p.write_text(res if isinstance(res, str) else json.dumps(idx))
    with pytest.raises(EstaError) as info:
        with Bundle.open(b, verify=False) as bundle:
            bundle.run(np.zeros((1, 3, 32, 32), np.float32), stitch_id=bundle.stitches()[0].id)
    msg = str(info.value)
    assert "\n" not in msg and re.search(expect, msg) and FIX.search(msg), msg


@pytest.mark.parametrize("shape", [(1, 3, 31, 32), (1, 3, 32, 31), (1, 4, 32, 32), (2, 32, 32), (3, 32)])
def test_bundle_run_wrong_shape_is_bundle_error(world: World, shape) -> None:
    from esta_export.runtime import Bundle, BundleError

    with Bundle.open(world.bundle) as b:
        with pytest.raises(BundleError, match=r"shape") as info:
            b.run(np.zeros(shape, np.float32), stitch_id=b.stitches()[0].id)
        assert "\n" not in str(info.value)
        with pytest.raises(BundleError):
            b.run(np.array([["a"]]), stitch_id=b.stitches()[0].id)
        with pytest.raises(BundleError):
            b.preprocess(np.zeros((0, 0, 3), np.uint8))
        out = b.run(np.zeros((2, 3, 32, 32), np.float32), stitch_id=b.stitches()[0].id)
        assert out.shape == (2, 10) and np.isfinite(out).all()


def _app_inputs(w: World) -> dict[str, Path]:
    d = w.inp / "app_inputs"
    d.mkdir(exist_ok=True)
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "str.npy", np.array(["pixels"]))
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    np.save(d / "zero.npy", np.zeros((0, 0, 3), np.uint8))
    return {"app-missing-file": d / "nope.png", "app-folder": d, "app-object-npy": d / "obj.npy",
            "app-string-npy": d / "str.npy", "app-empty-image": d / "empty.png",
            "app-garbage-png": d / "garbage.png", "app-no-pixels-npy": d / "zero.npy"}


def test_app_bad_images_are_one_line(world: World) -> None:
    cases = _app_inputs(world)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}   # the app runs without esta-export
    app = world.bundle / "app.py"
    procs = {name: subprocess.Popen([sys.executable, str(app), str(path), "--runs", "1"], env=env, cwd=world.cwd,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, path in cases.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert_one_line_error(p.returncode, out, err, r"image", prefix="app: error:")


def test_successful_command_prints_no_library_warnings(world: World, capfd) -> None:
    rc, out, err = run_cli(["export", world.supernet, "--out", world.export, "--stitches", "0-1"], capfd)
    assert rc == 0, err
    assert not re.search(r"Warning|warn\(", out + err), out + err


def test_earlier_outputs_still_load(world: World) -> None:
    """Last: the earlier export and compile survived every case above."""
    from esta_export.fsutil import sha256_file
    from esta_export.onnx_export import load_export

    summary = load_export(world.export)
    assert [s["id"] for s in summary["stitches"]] == [0, 1]
    for s in summary["stitches"]:
        assert sha256_file(world.export / s["onnx"]) == s["onnx_sha256"]
    comp = json.loads((world.compiled / "compile.json").read_text())
    assert comp["artifacts"] and all(math.isfinite(a["validation"]["value"]) for a in comp["artifacts"])
    for a in comp["artifacts"]:
        for rel, h in a["files"].items():
            assert sha256_file(world.compiled / rel) == h
