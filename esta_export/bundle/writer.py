"""Write a deployable bundle from the export, compile and select stages' files.

Everything is written into a hidden temporary folder next to the destination, the manifest last,
and the folder is renamed into place at the end: a crash leaves no folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..errors import BundleError, InputError
from .. import stages
from ..fsutil import atomic_write_json, atomic_write_text
from ..runtime.backends import BACKENDS as BACKEND_TABLE
from ..runtime.backends import BackendSpec
from ..stages import Layout
from .manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, file_table, input_spec
from ..runtime.integrity import sha256_file
from .manifest import DEVICE_BUILD_FIELDS
from .parts import BundleParts
from .repack import WeightPacker

RUNTIME_DIR = "esta_runtime"
TEMPLATES = Path(__file__).parent / "templates"


def _inputs(job_dir, target, export_dir, compiled_dir, selection) -> tuple[Path, Path, Path | None, Path | None]:
    job = Layout(job_dir) if job_dir is not None else None
    export_dir = Path(export_dir) if export_dir else (job.export_dir if job else None)
    compiled_dir = Path(compiled_dir) if compiled_dir else (job.compiled_dir(target) if job else None)
    if export_dir is None or compiled_dir is None:
        raise InputError("bundle needs the job folder or both --export and --compiled",
                         hint="pass the folder the main job wrote (it holds export/ and compiled/)")
    if selection is None and job is not None and job.selection(target).is_file():
        selection = job.selection(target)
    profiles = job.profile_store(target) if job is not None else None
    return export_dir, compiled_dir, Path(selection) if selection else None, profiles


def _latency(sel: dict | None, compiled_sha: str, profiles: dict[str, dict]) -> dict | None:
    """Latency statistics with where they came from: the selection (select/<T>.json, as
    esta-export select writes it), else the profile store's newest measured record."""
    if sel and sel.get("latency") is not None:
        lat = dict(sel.get("latency_ms") or {})
        lat["median"] = sel["latency"]
        lat["source"] = sel["latency_source"]
        lat["provenance"] = {"from": "selection (esta-export select)", "env_hash": sel.get("env_hash")}
        lat["unstable"] = bool(sel.get("unstable"))
        _add_switch_in(lat, sel.get("switch_in_ms") or (profiles.get(compiled_sha) or {}).get("switch_in_ms"))
        return lat
    rec = profiles.get(compiled_sha)
    if rec:
        lat = dict(rec["latency_ms"])
        lat["source"] = "measured"
        env = rec.get("env") or {}
        lat["provenance"] = {"from": "profile store", "env_hash": rec.get("env_hash"),
                             **{k: env.get(k) for k in ("hostname", "machine", "cpu_model", "threads") if k in env}}
        lat["unstable"] = bool(rec.get("unstable"))
        _add_switch_in(lat, rec.get("switch_in_ms"))
        return lat
    return None


def _add_switch_in(lat: dict, switch_in: dict | None) -> None:
    """The manifest's ``switch_in_ms``: the median first call after switching to the stitch."""
    if isinstance(switch_in, dict) and isinstance(switch_in.get("median"), (int, float)):
        lat["switch_in_ms"] = float(switch_in["median"])


def _session(compiled: dict, profiles: dict[str, dict], shas: list[str]) -> dict:
    """How the latencies were measured, so the runtime runs the same way: the session settings
    the profile records of the bundled artifacts carry (profile --tune's choice or the
    target's), else the target's [execution]."""
    ex = (compiled.get("target_spec") or {}).get("execution") or {}
    found = [profiles[h]["session"] for h in shas if isinstance((profiles.get(h) or {}).get("session"), dict)]
    if found and all(f == found[0] for f in found) and ("share_weights" in found[0]
                                                        or "performance_hint" in found[0]):
        # The backend's session settings as recorded (sharing/threads/spinning, or threads and a
        # performance hint): the runtime opens every stitch with them, as they were measured.
        return dict(found[0])
    return {"share_weights": bool(ex.get("share_weights", True)), "threads": ex.get("threads") or None,
            "intra_op_spinning": bool(ex.get("intra_op_spinning", False)), "source": "target"}


def write_bundle(job_dir: str | Path | None, target: str, bundle_dir: str | Path, *,
                 archive: bool = False, export_dir: str | Path | None = None,
                 compiled_dir: str | Path | None = None, selection: str | Path | None = None,
                 check_outputs: bool = True, device_engines: str | Path | None = None) -> Path:
    """Write the bundle of ``target`` to ``bundle_dir`` (or ``<bundle_dir>.tar.gz`` with archive).

    Returns the bundle folder, or the archive path when ``archive`` is true. ``device_engines``:
    a folder holding the stitches' engine files (``engines/``, each with its build record) and
    ``validation.json`` that the device loop brought back from the device's build; those engines
    ship as built.
    """
    export_dir, compiled_dir, selection, profiles_path = _inputs(job_dir, target, export_dir,
                                                                 compiled_dir, selection)
    export = stages.read_export(export_dir)
    compiled = stages.read_compile(compiled_dir)
    if compiled["target"] != target:
        raise InputError(f"{compiled_dir / 'compile.json'} is for target {compiled.get('target')!r}, "
                         f"not {target!r}", hint="pass the compiled folder of this target")
    stages.check_compiled_matches_export(compiled, export, compiled_dir / stages.COMPILE_SUMMARY,
                                         export_dir / stages.EXPORT_SUMMARY)
    select = stages.read_selection(selection, target) if selection else None
    profiles = (stages.read_profile_records(profiles_path, target).latest
                if profiles_path is not None else {})

    plan = _plan(export, compiled, select)
    if not plan["include"]:
        raise BundleError(f"no validated stitch to bundle for target {target} "
                          f"({len(plan['excluded'])} excluded)", hint="see compile.json 'failed' and re-run compile")

    bundle_dir = Path(bundle_dir)
    final = bundle_dir.with_name(bundle_dir.name[:-7]) if bundle_dir.name.endswith(".tar.gz") else bundle_dir
    from ..fsutil import check_not_input, check_out_dir
    check_out_dir(final)
    check_not_input(final, {"the export folder": export_dir, "the compiled folder": compiled_dir,
                            "the selection": selection})
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        manifest = _write_contents(tmp, target, export, compiled, compiled_dir, select, selection,
                                   profiles, plan, check_outputs)
        if device_engines is not None:
            _add_device_engines(tmp, manifest, Path(device_engines))
        _make_readable(tmp)
        manifest["files"] = file_table(tmp)
        atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence means the bundle is whole
        _make_readable(tmp)
        if archive:
            from .archive import write_archive

            out = final.with_name(final.name + ".tar.gz")
            write_archive(tmp, out, arcname=final.name)
            shutil.rmtree(tmp)
            return out
        _swap_into_place(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_readable(root: Path) -> None:
    """Temporary files are created 0600; a bundle is meant to be read by the app's user."""
    mask = os.umask(0)
    os.umask(mask)
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o666 & ~mask)


def _spec(compiled: dict) -> BackendSpec:
    """The table's declaration of the backend the compiled folder was built with."""
    return BACKEND_TABLE[compiled["backend"]]


def _first(*sources: dict | None, key: str):
    """The first non-null value of ``key`` (selection first, then the export summary)."""
    return next((d[key] for d in sources if d and d.get(key) is not None), None)


def _swap_into_place(tmp: Path, final: Path) -> None:
    from ..fsutil import swap_into_place

    if final.exists() and not (final / MANIFEST).is_file() and any(final.iterdir()):
        raise BundleError(f"{final} exists and is not a bundle", hint="choose another --out or remove it")
    swap_into_place(tmp, final)   # one atomic exchange where the OS has it: no moment without a bundle


def _plan(export: dict, compiled: dict, select: dict | None) -> dict:
    exported = {int(s["id"]): s for s in export.get("stitches", [])}
    artifacts = {int(a["id"]): a for a in compiled.get("artifacts", [])}
    failed = {int(f["id"]): f.get("reason", "failed") for f in compiled.get("failed", [])}
    excluded = []
    if select is not None:
        # Sorted: the bundle's bytes depend on which stitches were selected, not on the order
        # (by measured latency) the selection lists them in.
        wanted = sorted(int(i) for i in select.get("selected", []))
        note = f"stitches selected by esta-export select ({len(wanted)})"
    else:
        wanted = sorted(artifacts)
        note = "no selection found: every validated stitch is bundled"
    include = []
    for sid in wanted:
        art = artifacts.get(sid)
        route = (art or exported.get(sid) or {}).get("route")
        if art is None:
            excluded.append({"id": sid, "route": route, "reason": failed.get(sid, "no compiled artifact")})
        elif (art.get("validation") or {}).get("passed") is None and compiled.get("device_build_required"):
            include.append(sid)  # engine validated on the device after its build; the graph was at export
        elif not (art.get("validation") or {}).get("passed", False):
            excluded.append({"id": sid, "route": route,
                             "reason": failed.get(sid) or f"validation failed: {art.get('validation')}"})
        else:
            include.append(sid)
    return {"include": include, "excluded": excluded, "note": note, "exported": exported,
            "artifacts": artifacts}


def _write_contents(root: Path, target: str, export: dict, compiled: dict, compiled_dir: Path,
                    select: dict | None, selection_path: Path | None, profiles: dict, plan: dict,
                    check_outputs: bool) -> dict:
    from ..backends import get_backend

    backend = get_backend(compiled["backend"])   # its bundle_* hooks: how its artifacts ship
    spec = input_spec(export.get("input", {}))
    models = root / "models"
    models.mkdir()
    parts = BundleParts(root, compiled, compiled_dir, spec, plan["include"],
                        WeightPacker(models / "weights.bin"))
    stitches = [_stitch_entry(parts, backend, sid, plan, select, profiles) for sid in plan["include"]]
    weights = _onnx_weights(parts)
    weights = backend.bundle_weights(parts) or weights
    for entry in stitches:
        entry["artifact"]["sha256"] = sha256_file(root / entry["artifact"]["path"])
        if check_outputs:
            check = backend.check_bundled(parts, entry)
            if check is not None:
                entry["bundle_check"] = check
    device_build = bool(compiled.get("device_build_required"))
    device_fields = None
    if device_build or _spec(compiled).built_on_device:   # the table of backends says
        device_fields = backend.bundle_device_build(parts)
    reference_file = _device_reference(parts, built_on_device=device_fields is not None)
    _copy_runtime(root)
    target_info = {"name": target, "backend": compiled.get("backend"), "precision": compiled.get("precision"),
                   "runtime": compiled.get("runtime"), "verified_on_hardware": compiled.get("verified_on_hardware"),
                   "verified_on": parts.target_spec.get("verified_on_hardware"),
                   "device": parts.target_spec.get("device"),
                   "engines_built": compiled.get("engines_built"), "device_build_required": device_build,
                   **DEVICE_BUILD_FIELDS, **(device_fields or {})}
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "supernet": {k: export.get("supernet", {}).get(k) for k in ("sha256", "space", "source_format")},
        "target": target_info, "input": spec, "output": export.get("output"),
        "weights": weights,
        "selection": {"source": selection_path.name if selection_path else None, "note": plan["note"],
                      "accuracy_source": (select or {}).get("accuracy_source")},
        "stitches": stitches, "excluded": plan["excluded"],
        "reference": None if reference_file is None else {
            "path": reference_file, "thresholds": parts.target_spec.get("validation"),
            "use": "re-validation of int8 stitches on a CPU lacking what they were validated with"},
        # How the latencies above were measured, and so how the runtime should run to see them.
        "session": _session(compiled, profiles, [plan["artifacts"][sid].get("sha256", "") for sid in plan["include"]]),
    }
    _write_docs(root, manifest, backend.bundle_readme(manifest))
    return manifest


def _stitch_entry(parts: BundleParts, backend, sid: int, plan: dict, select: dict | None,
                  profiles: dict) -> dict:
    """The manifest entry of one stitch: what select, export and compile say about it, and the
    fields the backend's hook returns once it has put the artifact into the bundle."""
    art = plan["artifacts"][sid]
    src = parts.compiled_dir / art["path"]
    if not src.is_file() and art.get("built", True) is not False:  # unbuilt: built on the device
        raise BundleError(f"compiled artifact {src} of stitch {sid} is missing",
                          hint="re-run esta-export compile")
    exp = plan["exported"].get(sid, {})
    sel = {int(s["id"]): s for s in (select or {}).get("stitches", [])}.get(sid)
    entry = {"id": sid, "route": art.get("route") or exp.get("route"),
             "flops": (sel or exp).get("flops"), "params": (sel or exp).get("params"),
             "latency": _latency(sel, art.get("sha256", ""), profiles),
             "accuracy": _first(sel, exp, key="accuracy"),
             "accuracy_source": _first(sel, exp, key="accuracy_source"),
             "validation": art.get("validation"), "precision": art.get("precision")}
    if art.get("int8_isa") is not None:  # which CPUs the int8 validation holds on (runtime/cpu.py)
        entry["int8_isa"] = art["int8_isa"]
    entry.update(backend.bundle_artifact(parts, sid, art))
    return entry


def _onnx_weights(parts: BundleParts) -> dict:
    """The shared weights file every bundled ONNX graph points into, and its index."""
    index = parts.packer.close()
    atomic_write_text(parts.models / "weights.json", json.dumps(index, separators=(",", ":")))
    return {"file": "models/weights.bin", "index": "models/weights.json",
            "unique_bytes": parts.packer.unique_bytes, "tensors": len(index["tensors"])}


def _device_reference(parts: BundleParts, *, built_on_device: bool) -> str | None:
    """The reference outputs the bundle's runtime re-validates with (reference.npz): already
    there when the device build shipped it, written for int8 bundles otherwise."""
    if built_on_device:
        return "reference.npz" if (parts.root / "reference.npz").is_file() else None
    if parts.compiled.get("precision") != "int8":
        return None
    return parts.write_device_reference()


def _copy_runtime(root: Path) -> None:
    from ..runtime.ship import copy_runtime

    copy_runtime(root / RUNTIME_DIR)  # with its device packages, as it is
    for name in ("app.py", "profile_device.py"):
        shutil.copy2(TEMPLATES / name, root / name)


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _weights_desc(manifest: dict) -> str:
    w = manifest.get("weights") or {}
    return f"their weights stored once (`{w.get('file', 'models/weights.bin')}`, {w.get('unique_bytes', 0):,} bytes)"


def _write_docs(root: Path, manifest: dict, backend_parts: dict[str, str]) -> None:
    """README.md from the manifest; ``backend_parts``: the backend's sections (bundle_readme)."""
    rows = []
    for s in manifest["stitches"]:
        lat = s.get("latency") or {}
        rows.append(f"| {s['id']} | {s['route']} | {_fmt(lat.get('median'))} | {lat.get('source', 'none')} | "
                    f"{_fmt(s.get('accuracy'))} | {s.get('accuracy_source') or '-'} |")
    excluded = "".join(f"- stitch {e['id']} ({e.get('route')}): excluded, {e['reason']}\n"
                       for e in manifest["excluded"])
    t = manifest["target"]
    spec = manifest["input"]
    verified = t.get("verified_on") if t.get("verified_on_hardware") else t.get("verified_on_hardware")
    backend = BACKEND_TABLE.get(t.get("backend") or "")
    runtime_req = backend.pip if backend is not None else f"{t.get('backend')}"
    text = (TEMPLATES / "README.md.tmpl").read_text().format(
        target=t["name"], num_stitches=len(manifest["stitches"]), backend=t.get("backend"),
        precision=t.get("precision"),
        verified=(f"the compiled artifacts were validated on {verified}" if isinstance(verified, str) else
                  "validated on the build machine" if verified else "not verified on hardware"),
        runtime_req=runtime_req, stitch_rows="\n".join(rows),
        weights_desc=backend_parts.get("weights_desc") or _weights_desc(manifest),
        excluded=("\nExcluded (failed validation or not compiled):\n" + excluded) if excluded else "",
        input_desc=f"{spec.get('name')} {spec.get('shape')} {spec.get('layout')} {spec.get('dtype')}, "
                   f"mean {spec.get('mean')}, std {spec.get('std')}",
        device_build=backend_parts.get("device_build", ""))
    atomic_write_text(root / "README.md", text)
