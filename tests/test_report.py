"""Report: report.json, self-contained report.html (rendered in headless Chromium), PNGs; and
the profile -> select -> report commands end to end through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from esta_export.cli import main
from fixtures.routes import family
from fixtures.compiled import make_compiled


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """OUT/ in the main job's layout, profiled and selected through the CLI."""
    root = tmp_path_factory.mktemp("out")
    compiled = make_compiled(root, family()[:8])
    assert main(["profile", str(compiled), "--target", "cpu", "--runs", "5", "--seconds",
                 "0.01", "--no-memory", "--stitches", "0,1,2,3,4,5,6"]) == 0
    assert main(["select", str(compiled), "--target", "cpu"]) == 0
    assert main(["report", str(root)]) == 0
    return root


def test_report_files_and_json(out: Path) -> None:
    rep = out / "report"
    for name in ("report.json", "report.html", "pareto.png", "flops_latency.png"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0
    assert (rep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((rep / "report.json").read_text())
    assert data["schema"] == "esta-export/report" and data["schema_version"] == "1.0"
    (t,) = data["targets"]
    assert t["target"] == "cpu" and t["backend"] == "onnxruntime" and t["compiled"] == 8
    sel = t["selection"]
    assert len(sel["stitches"]) == 8
    # stitch 7 was not profiled: its latency is predicted and the report says so
    assert any("predicted, not measured" in w for w in data["warnings"])
    assert any("dropped" in w for w in data["warnings"])


def test_html_is_self_contained(out: Path) -> None:
    text = (out / "report" / "report.html").read_text()
    assert "<script>" in text and "<style>" in text
    assert 'src="http' not in text and "href=\"http" not in text  # nothing fetched from outside
    assert text.count('src="data:image/png;base64,') == 2
    assert text.count("<tr class=") == 8


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed "
                                                "(apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(out: Path, tmp_path: Path) -> None:
    html = out / "report" / "report.html"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           html.as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, proc.stderr[-2000:]
    # The rendered DOM holds both plots as data URIs and one table row per stitch.
    assert dom.count('<img class="plot"') == 2 and "data:image/png;base64," in dom
    assert dom.count("data-id=") == 8
    assert "Target cpu" in dom and "Kendall tau" in dom
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                           "--window-size=1200,1600", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_cli_errors_are_one_line_exit_2(out: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["select", str(out / "compiled" / "cpu"), "--target", "cpu",
                 "--latency-budget-ms", "0.000001"]) == 2
    assert main(["profile", str(out / "compiled" / "cpu"), "--target", "cpu", "--stitches",
                 "a,b"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("esta-export: error:") == 3
