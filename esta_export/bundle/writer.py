"""Write a deployable bundle from the export, compile and select stages' files.

Everything is written into a hidden temporary folder next to the destination, the manifest last,
and the folder is renamed into place at the end: a crash leaves no folder that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..errors import BundleError, InputError
from ..fsutil import atomic_write_json, atomic_write_text, read_json
from .manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, file_table, input_spec
from .repack import WeightPacker

RUNTIME_DIR = "esta_runtime"
TEMPLATES = Path(__file__).parent / "templates"


def _inputs(job_dir, target, export_dir, compiled_dir, selection) -> tuple[Path, Path, Path | None, Path | None]:
    job = Path(job_dir) if job_dir is not None else None
    export_dir = Path(export_dir) if export_dir else (job / "export" if job else None)
    compiled_dir = Path(compiled_dir) if compiled_dir else (job / "compiled" / target if job else None)
    if export_dir is None or compiled_dir is None:
        raise InputError("bundle needs the job folder or both --export and --compiled",
                         hint="pass the folder the main job wrote (it holds export/ and compiled/)")
    if selection is None and job is not None and (job / "select" / f"{target}.json").is_file():
        selection = job / "select" / f"{target}.json"
    profiles = job / "profiles" / f"{target}.jsonl" if job is not None else None
    return export_dir, compiled_dir, Path(selection) if selection else None, profiles


def _latest_profiles(path: Path | None) -> dict[str, dict]:
    """Latest measured record per artifact sha256 (profile store, JSON lines)."""
    out: dict[str, dict] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, AttributeError, TypeError):
            rec = json.loads(line)
            out[rec["artifact_sha256"]] = rec
    return out


def _latency(sel_entry: dict | None, compiled_sha: str, profiles: dict[str, dict]) -> dict | None:
    if sel_entry and sel_entry.get("latency"):
        lat = dict(sel_entry["latency"])
        lat.setdefault("provenance", "selection (esta-export select)")
        return lat
    rec = profiles.get(compiled_sha)
    if rec:
        lat = {k: v for k, v in rec.get("latency_ms", {}).items()}
        lat["source"] = "measured"
        env = rec.get("env", {})
        lat["provenance"] = {k: env.get(k) for k in ("hostname", "machine", "cpu_model", "runtime",
                                                     "runtime_version", "threads") if k in env}
        return lat
    return None


def write_bundle(job_dir: str | Path | None, target: str, bundle_dir: str | Path, *,
                 archive: bool = False, export_dir: str | Path | None = None,
                 compiled_dir: str | Path | None = None, selection: str | Path | None = None,
                 check_outputs: bool = True) -> Path:
    """Write the bundle of ``target`` to ``bundle_dir`` (or ``<bundle_dir>.tar.gz`` with archive).

    Returns the bundle folder, or the archive path when ``archive`` is true.
    """
    export_dir, compiled_dir, selection, profiles_path = _inputs(job_dir, target, export_dir,
                                                                 compiled_dir, selection)
    export = read_json(export_dir / "export.json", "export summary (export.json)")
    compiled = read_json(compiled_dir / "compile.json", "compile summary (compile.json)")
    if compiled.get("target") not in (None, target):
        raise InputError(f"{compiled_dir / 'compile.json'} is for target {compiled.get('target')!r}, "
                         f"not {target!r}", hint="pass the compiled folder of this target")
    select = read_json(selection, "selection") if selection else None
    profiles = _latest_profiles(profiles_path)

    plan = _plan(export, compiled, select)
    if not plan["include"]:
        raise BundleError(f"no validated stitch to bundle for target {target} "
                          f"({len(plan['excluded'])} excluded)", hint="see compile.json 'failed' and re-run compile")

    bundle_dir = Path(bundle_dir)
    final = bundle_dir.with_name(bundle_dir.name[:-7]) if bundle_dir.name.endswith(".tar.gz") else bundle_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        manifest = _write_contents(tmp, target, export, compiled, compiled_dir, select, selection,
                                   profiles, plan, check_outputs)
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


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        if not (final / MANIFEST).is_file() and any(final.iterdir()):
            raise BundleError(f"{final} exists and is not a bundle", hint="choose another --out or remove it")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _plan(export: dict, compiled: dict, select: dict | None) -> dict:
    exported = {int(s["id"]): s for s in export.get("stitches", [])}
    artifacts = {int(a["id"]): a for a in compiled.get("artifacts", [])}
    failed = {int(f["id"]): f.get("reason", "failed") for f in compiled.get("failed", [])}
    excluded = []
    if select is not None:
        wanted = [int(i) for i in select.get("selected", [])]
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
    import onnx

    spec = input_spec(export.get("input", {}))
    models = root / "models"
    models.mkdir()
    sel_entries = {int(s["id"]): s for s in (select or {}).get("stitches", [])}
    packer = WeightPacker(models / "weights.bin")
    device_build = bool(compiled.get("device_build_required"))
    stitches = []
    for sid in plan["include"]:
        art = plan["artifacts"][sid]
        src = compiled_dir / art["path"]
        if not src.is_file():
            raise BundleError(f"compiled artifact {src} of stitch {sid} is missing",
                              hint="re-run esta-export compile")
        exp = plan["exported"].get(sid, {})
        sel = sel_entries.get(sid)
        entry = {"id": sid, "route": art.get("route") or exp.get("route"),
                 "flops": (sel or exp).get("flops"), "params": (sel or exp).get("params"),
                 "latency": _latency(sel, art.get("sha256", ""), profiles),
                 "accuracy": (sel or {}).get("accuracy", exp.get("accuracy")),
                 "accuracy_source": (sel or {}).get("accuracy_source", exp.get("accuracy_source")),
                 "validation": art.get("validation")}
        if src.suffix == ".onnx":
            model = onnx.load(str(src), load_external_data=True)
            packer.add_model(sid, model)
            rel = f"models/stitch_{sid:03d}.onnx"
            onnx.save_model(model, str(root / rel))
            entry["artifact"] = {"format": "onnx", "path": rel, "compiled_sha256": art.get("sha256")}
        else:  # other formats (OpenVINO IR, ...) are copied with their files as compiled
            rel_dir = f"models/stitch_{sid:03d}"
            for relf in art.get("files") or {art["path"]: None}:
                (root / rel_dir / relf).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(compiled_dir / relf, root / rel_dir / relf)
            rel = f"{rel_dir}/{art['path']}"
            entry["artifact"] = {"format": "openvino-ir" if src.suffix == ".xml" else src.suffix.lstrip("."),
                                 "path": rel, "compiled_sha256": art.get("sha256")}
        stitches.append(entry)
    index = packer.close()
    atomic_write_text(models / "weights.json", json.dumps(index, separators=(",", ":")))
    from ..runtime.integrity import sha256_file

    for entry in stitches:
        entry["artifact"]["sha256"] = sha256_file(root / entry["artifact"]["path"])
        if check_outputs and entry["artifact"]["format"] == "onnx":
            entry["bundle_check"] = _check_same_outputs(compiled_dir / plan["artifacts"][entry["id"]]["path"],
                                                        root / entry["artifact"]["path"], spec)
    tensorrt = None
    if device_build:
        tensorrt = _copy_device_build(root, compiled, compiled_dir, plan)
    _copy_runtime(root)
    target_info = {"name": target, "backend": compiled.get("backend"), "precision": compiled.get("precision"),
                   "runtime": compiled.get("runtime"), "verified_on_hardware": compiled.get("verified_on_hardware"),
                   "engines_built": compiled.get("engines_built"), "device_build_required": device_build,
                   "tensorrt": tensorrt}
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "supernet": {k: export.get("supernet", {}).get(k) for k in ("sha256", "space", "source_format")},
        "target": target_info, "input": spec, "output": export.get("output"),
        "weights": {"file": "models/weights.bin", "index": "models/weights.json",
                    "unique_bytes": packer.unique_bytes, "tensors": len(index["tensors"])},
        "selection": {"source": selection_path.name if selection_path else None, "note": plan["note"],
                      "accuracy_source": (select or {}).get("accuracy_source")},
        "stitches": stitches, "excluded": plan["excluded"],
    }
    _write_docs(root, manifest)
    return manifest


def _check_same_outputs(original: Path, repacked: Path, spec: dict) -> dict:
    """Run the compiled artifact and the bundled graph on one input: the repack must change nothing."""
    import numpy as np
    import onnxruntime as ort

    shape = [1 if not isinstance(d, int) else d for d in spec.get("shape", [1, 3, 224, 224])]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = spec.get("name", "pixels")
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
            for p in (original, repacked)]
    diff = float(np.max(np.abs(outs[0] - outs[1])))
    if diff > 1e-6:
        raise BundleError(f"bundled graph {repacked.name} differs from its compiled artifact by {diff:.3g}",
                          hint="this is a bug in the bundle writer; please report it")
    return {"max_abs_diff_vs_compiled": diff, "input": "standard normal, seed 0, batch 1",
            "runtime": f"onnxruntime {ort.__version__}"}


def _copy_device_build(root: Path, compiled: dict, compiled_dir: Path, plan: dict) -> dict:
    """TensorRT: engines are built on the device; ship the build kit compile wrote next to the graphs."""
    kit = root / "device_build"
    kit.mkdir()
    skip = {plan["artifacts"][sid]["path"] for sid in plan["include"]}
    for sid in plan["include"]:
        for rel in (plan["artifacts"][sid].get("files") or {}):
            src = compiled_dir / rel
            if rel in skip or src.suffix in (".onnx", ".bin", ".data") or not src.is_file():
                continue
            (kit / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, kit / rel)
    for rel in compiled.get("build_kit", []) or []:
        src = compiled_dir / rel
        if src.is_file():
            (kit / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, kit / rel)
    runtime = compiled.get("runtime") or {}
    return {"version": runtime.get("tensorrt") if isinstance(runtime, dict) else None,
            "gpu": compiled.get("gpu") or compiled.get("device"),
            "timing_cache": compiled.get("timing_cache", "device_build/timing.cache"),
            "note": "engines are built on the device; the runtime refuses a plan built for another "
                    "TensorRT version or GPU (esta_runtime.tensorrt_check)"}


def _copy_runtime(root: Path) -> None:
    src = Path(__file__).resolve().parent.parent / "runtime"
    dst = root / RUNTIME_DIR
    dst.mkdir()
    for path in sorted(src.glob("*.py")):
        shutil.copy2(path, dst / path.name)
    for name in ("app.py", "profile_device.py"):
        shutil.copy2(TEMPLATES / name, root / name)


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _write_docs(root: Path, manifest: dict) -> None:
    rows = []
    for s in manifest["stitches"]:
        lat = s.get("latency") or {}
        rows.append(f"| {s['id']} | {s['route']} | {_fmt(lat.get('median'))} | {lat.get('source', 'none')} | "
                    f"{_fmt(s.get('accuracy'))} | {s.get('accuracy_source') or '-'} |")
    excluded = "".join(f"- stitch {e['id']} ({e.get('route')}): excluded, {e['reason']}\n"
                       for e in manifest["excluded"])
    t = manifest["target"]
    spec = manifest["input"]
    verified = t.get("verified_on_hardware")
    device_build = ""
    if t.get("device_build_required"):
        trt = t.get("tensorrt") or {}
        device_build = (f"\n## Build the engines on the device (TensorRT)\nThe ONNX graphs are in `models/`; "
                        f"the build kit is in `device_build/`. Expected TensorRT {trt.get('version')} on "
                        f"{trt.get('gpu')}; timing cache: `{trt.get('timing_cache')}`. A plan built for another "
                        f"TensorRT version or GPU is refused at load time.\n")
    runtime_req = "onnxruntime" if t.get("backend") in (None, "onnxruntime") else f"{t.get('backend')}"
    text = (TEMPLATES / "README.md.tmpl").read_text().format(
        target=t["name"], num_stitches=len(manifest["stitches"]), backend=t.get("backend"),
        precision=t.get("precision"),
        verified=(verified if isinstance(verified, str) else
                  "verified on hardware" if verified else "not verified on hardware"),
        runtime_req=runtime_req, stitch_rows="\n".join(rows),
        excluded=("\nExcluded (failed validation or not compiled):\n" + excluded) if excluded else "",
        input_desc=f"{spec.get('name')} {spec.get('shape')} {spec.get('layout')} {spec.get('dtype')}, "
                   f"mean {spec.get('mean')}, std {spec.get('std')}",
        device_build=device_build)
    atomic_write_text(root / "README.md", text)
