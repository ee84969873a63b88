"""Every command of the README's command table runs, through the CLI, on a tiny supernet.

The table is parsed from README.md, so a command added there without a test here fails."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from esta_export.cli import main as cli
from esta_export.commands import load_all

ROOT = Path(__file__).resolve().parents[1]
# Commands this module does not run itself, and the test that runs each through the CLI.
ELSEWHERE = {"run": "tests/test_readme.py (the main job on the demo)",
             "train": "tests/test_train_trainer.py::test_cli_trains_an_npz_and_reports_bad_input_in_one_line",
             "stitch": "tests/test_stitch.py"}


def readme_commands() -> list[str]:
    """First word after `esta-export` in each row of the command table ('run' for the main job)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| command | does |"):]
    table = table[:table.index("\n\n")]
    out = []
    for row in table.splitlines()[2:]:
        m = re.match(r"\| `esta-export ([^\s`]+)", row)
        assert m, row
        word = m.group(1)
        out.append("run" if word.isupper() else word)   # SUPERNET: the main job
    return out


def test_table_names_only_real_commands() -> None:
    names = readme_commands()
    assert names and set(names) <= set(load_all())
    for name in set(names) & set(ELSEWHERE):
        path = ELSEWHERE[name].split("::")[0].split(" ")[0]
        assert f'"{name}"' in (ROOT / path).read_text() or name == "run", ELSEWHERE[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import perturbed, tiny_anchors
    from esta_export.supernet import Supernet, SupernetSpec
    from esta_export.supernet.formats import save_supernet

    d = tmp_path_factory.mktemp("cmds")
    model = perturbed(Supernet(SupernetSpec(tiny_anchors(), "snnet_v1")))
    save_supernet(model, d / "native.safetensors")
    torch.save({"model": model.state_dict(), "epoch": 1,
                "args": argparse.Namespace(nearest_stitching=True, model="deit")}, d / "ckpt.pth")
    return d


def _ok(argv: list, capsys) -> str:
    rc = cli([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    return out.out


@pytest.mark.slow
def test_every_stage_command_runs(world: Path, capsys) -> None:
    """inspect, convert, export, targets, compile, profile, select, report, bundle, in order."""
    ran = set()
    out = world / "out"
    assert "stitches" in _ok(["inspect", world / "native.safetensors", "--json"], capsys)
    ran.add("inspect")
    _ok(["convert", world / "ckpt.pth", world / "converted.safetensors", "--num-heads", "2,3,4"], capsys)
    assert (world / "converted.safetensors").is_file()
    ran.add("convert")
    _ok(["export", world / "converted.safetensors", "--out", out / "export", "--stitches", "0,1,3,4"], capsys)
    assert len(json.loads((out / "export/export.json").read_text())["stitches"]) == 4
    ran.add("export")
    assert "cpu" in _ok(["targets"], capsys)
    ran.add("targets")
    _ok(["compile", out / "export", "--target", "cpu"], capsys)
    ran.add("compile")
    _ok(["profile", out / "compiled/cpu", "--target", "cpu", "--runs", "3", "--seconds", "0.01",
         "--no-memory"], capsys)
    ran.add("profile")
    _ok(["select", out / "compiled/cpu", "--target", "cpu"], capsys)
    ran.add("select")
    _ok(["report", out], capsys)
    assert (out / "report/report.html").is_file()
    ran.add("report")
    _ok(["bundle", out, "--target", "cpu", "--out", out / "bundle/cpu"], capsys)
    assert (out / "bundle/cpu/manifest.json").is_file()
    ran.add("bundle")
    assert set(readme_commands()) - set(ELSEWHERE) <= ran
