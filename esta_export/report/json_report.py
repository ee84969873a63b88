"""report.json: what the stages produced, gathered into one versioned document, plus the files
written beside it (report.html, pareto.png, flops_latency.png).

Inputs are found in the main job's layout (OUT/export, OUT/compiled/<T>, OUT/profiles,
OUT/select) or given explicitly. The report only gathers and draws: it measures nothing, and
every warning of every stage is carried through.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .. import stages
from ..errors import InputError
from ..stages import Layout

SCHEMA = "esta-export/report"
SCHEMA_VERSION = "1.0"


def _tool_version() -> str:
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def find_inputs(out_dir: str | Path | None = None, *, selections: Sequence[str | Path] = (),
                compiled: Sequence[str | Path] = ()) -> tuple[list[Path], list[Path]]:
    """Selection files and compiled folders from an OUT folder and/or explicit paths; a file
    given both ways (the main job passes its own selection and its OUT) is listed once."""
    sels = [Path(p) for p in selections]
    comps = [Path(p) for p in compiled]
    if out_dir is not None:
        out = Path(out_dir)
        if not out.is_dir():
            raise InputError(f"report folder not found: {out}",
                             hint="pass the --out folder of the main job (holds select/)")
        sels += Layout(out).selections()
        comps += Layout(out).compiled_dirs()
    sels, comps = _once(sels), _once(comps)
    if not sels:
        raise InputError(f"no selection found{f' under {out_dir}/select' if out_dir else ''}",
                         hint="run 'esta-export select COMPILED_DIR --target T' first, or pass "
                              "--selection FILE")
    return sels, comps


def _fleet_spread(sel: dict[str, Any]) -> dict[str, Any] | None:
    """Board-to-board spread when the target was profiled on a Ray fleet (profiling/fleet.py)."""
    store = sel.get("store")
    if not store or not Path(store).is_file():
        return None
    from ..profiling.fleet import board_spread

    return board_spread(stages.read_profile_records(store, sel.get("target")).every)


def _once(paths: list[Path]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def build_report(selections: Sequence[Path], compiled: Sequence[Path] = ()) -> dict[str, Any]:
    from ..profiling.environment import describe

    comp_by_target: dict[str, dict[str, Any]] = {}
    for c in compiled:
        data = stages.read_compile(c)
        comp_by_target[data["target"]] = data
    targets, warnings = [], []
    for path in selections:
        sel = stages.read_selection(path)
        comp = comp_by_target.get(sel["target"], {})
        verified = comp.get("verified_on_hardware", sel.get("verified_on_hardware"))
        where = ((comp.get("target_spec") or {}).get("verified_on_hardware"))
        if verified and isinstance(where, str):
            verified = where   # say where it was verified, not just "True"
        hw = sel.get("hardware") or {}
        if hw.get("known"):
            # Where the latencies really ran decides, not the target file's claim.
            ran = ", ".join(hw.get("ran_on") or [])
            verified = f"measured on {ran}" if hw.get("matches") else False
        tw = list(sel.get("warnings", []))
        if hw.get("known") and not hw.get("matches"):
            tw.insert(0, f"target {sel['target']} was measured on a stand-in, not its device class: "
                         f"{hw.get('reason')} (ran on {', '.join(hw.get('ran_on') or [])})")
        if not verified and not any("not verified on hardware" in w for w in tw):
            tw.insert(0, f"target {sel['target']} is not verified on hardware")
        if sel.get("predictor") and sel["predictor"].get("leave_one_out", {}).get("mape") is not None:
            loo = sel["predictor"]["leave_one_out"]
            n_pred = sum(s["latency_source"] == "predicted" for s in sel["stitches"])
            if n_pred:
                tw.append(f"{n_pred} stitch latencies are predicted, not measured (leave-one-out "
                          f"MAPE {loo['mape']:.1%}, {loo['within_10pct']:.0%} within +-10%)")
        warnings += [f"[{sel['target']}] {w}" for w in tw]
        env = sel.get("env") or {}
        targets.append({
            "target": sel["target"], "selection_file": str(path),
            "backend": comp.get("backend"), "precision": comp.get("precision"),
            "verified_on_hardware": verified,
            "compiled": len(comp.get("artifacts", [])) if comp else None,
            "failed": comp.get("failed", []),
            "environment": env, "environment_lines": [line for line in describe(env) if line] if env else [],
            "selection": sel, "warnings": tw, "fleet": _fleet_spread(sel),
        })
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tool_version": _tool_version(),
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "targets": targets, "warnings": warnings}


def write_report(out_dir: str | Path | None = None, report_dir: str | Path | None = None, *,
                 selections: Sequence[str | Path] = (), compiled: Sequence[str | Path] = ()
                 ) -> dict[str, Path]:
    """Write report.json, report.html and the PNGs; returns their paths."""
    from ..fsutil import (atomic_write_bytes, atomic_write_json, atomic_write_text, output_lock, prepare_out_dir,
                          stage_output)
    from .html import render_html
    from .plots import flops_latency_plot, pareto_plot

    sels, comps = find_inputs(out_dir, selections=selections, compiled=compiled)
    report = build_report(sels, comps)
    dest = Path(report_dir) if report_dir else (Layout(out_dir).report_dir if out_dir
                                               else Layout(sels[0].parent.parent).report_dir)
    images: dict[str, bytes] = {}
    for t in report["targets"]:
        name = t["target"]
        images[f"pareto_{name}.png"] = pareto_plot(t["selection"])
        images[f"flops_latency_{name}.png"] = flops_latency_plot(t["selection"])
        t["plots"] = [f"pareto_{name}.png", f"flops_latency_{name}.png"]
    paths: dict[str, Path] = {}
    # One writer per report folder; an earlier complete report is replaced only once the new one
    # is whole (written beside it, swapped in), so a failure leaves it exactly as it was.
    final = prepare_out_dir(dest, "--report-dir")
    with output_lock(final), stage_output(final, "report.json") as d:
        for fname, data in images.items():
            atomic_write_bytes(d / fname, data)
            paths[fname] = dest / fname
        first = report["targets"][0]["target"]
        # The README shows this one: the first target's measured front.
        atomic_write_bytes(d / "pareto.png", images[f"pareto_{first}.png"])
        atomic_write_bytes(d / "flops_latency.png", images[f"flops_latency_{first}.png"])
        atomic_write_text(d / "report.html", render_html(report, images))
        atomic_write_json(d / "report.json", report)  # last: its presence means the report is done
    paths.update({"pareto.png": dest / "pareto.png", "report.html": dest / "report.html",
                  "report.json": dest / "report.json"})
    return paths
