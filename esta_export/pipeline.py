"""The stages wired together, each with one progress display and a one-paragraph summary.

Every stage reads the previous stage's files and writes its own, so ``esta-export SUPERNET
--target T --out OUT`` is the same as running export, compile, profile, select, report and bundle
one after the other on ``OUT``.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_export import ExportResult, ExportSettings, export_supernet
from .progress import info, stage
from .supernet.formats import LoadedSupernet


def run_export(loaded: LoadedSupernet, out_dir: str | Path, *, stitches: str | None = "all",
               settings: ExportSettings | None = None, fresh: bool = False, quiet: bool = False) -> ExportResult:
    from .onnx_export import parse_stitch_selection

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
