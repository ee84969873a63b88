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
from .ir_pack import IrPacker
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
    if found and all(f == found[0] for f in found) and "share_weights" in found[0]:
        return dict(found[0])
    return {"share_weights": bool(ex.get("share_weights", True)), "threads": ex.get("threads") or None,
            "intra_op_spinning": bool(ex.get("intra_op_spinning", False)), "source": "target"}


def write_bundle(job_dir: str | Path | None, target: str, bundle_dir: str | Path, *,
                 archive: bool = False, export_dir: str | Path | None = None,
                 compiled_dir: str | Path | None = None, selection: str | Path | None = None,
                 check_outputs: bool = True, device_engines: str | Path | None = None) -> Path:
    """Write the bundle of ``target`` to ``bundle_dir`` (or ``<bundle_dir>.tar.gz`` with archive).

    Returns the bundle folder, or the archive path when ``archive`` is true. ``device_engines``:
    a folder holding ``engines/stitch_<id>.plan`` (+ ``.plan.json``) and ``validation.json`` that
    the device loop brought back from the device's build; those engines ship as built.
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
    import onnx

    spec = input_spec(export.get("input", {}))
    models = root / "models"
    models.mkdir()
    sel_entries = {int(s["id"]): s for s in (select or {}).get("stitches", [])}
    packer = WeightPacker(models / "weights.bin")
    ir_packer = None
    device_build = bool(compiled.get("device_build_required"))
    stitches = []
    for sid in plan["include"]:
        art = plan["artifacts"][sid]
        src = compiled_dir / art["path"]
        if not src.is_file() and not (src.suffix == ".plan" and not art.get("built", True)):
            raise BundleError(f"compiled artifact {src} of stitch {sid} is missing",
                              hint="re-run esta-export compile")
        exp = plan["exported"].get(sid, {})
        sel = sel_entries.get(sid)
        entry = {"id": sid, "route": art.get("route") or exp.get("route"),
                 "flops": (sel or exp).get("flops"), "params": (sel or exp).get("params"),
                 "latency": _latency(sel, art.get("sha256", ""), profiles),
                 "accuracy": _first(sel, exp, key="accuracy"),
                 "accuracy_source": _first(sel, exp, key="accuracy_source"),
                 "validation": art.get("validation"), "precision": art.get("precision")}
        if art.get("int8_isa") is not None:  # which CPUs the int8 validation holds on (runtime/cpu.py)
            entry["int8_isa"] = art["int8_isa"]
        onnx_rel = art["path"] if src.suffix == ".onnx" else next(
            (f for f in (art.get("files") or {}) if f.endswith(".onnx")), None)
        if onnx_rel is not None:
            # ONNX graphs (the ORT artifact itself, or the graph a device engine is built from)
            model = onnx.load(str(compiled_dir / onnx_rel), load_external_data=True)
            packer.add_model(sid, model)
            rel = f"models/stitch_{sid:03d}.onnx"
            onnx.save_model(model, str(root / rel))
            entry["artifact"] = {"format": "onnx", "path": rel, "compiled_sha256": art.get("sha256") or art.get("source_sha256"),
                                 "source": onnx_rel}
            if src.suffix == ".plan":
                entry["engine"] = _copy_engine(root, compiled_dir, art, sid)
        elif src.suffix == ".xml":  # OpenVINO IR: every IR points into one shared weights file
            ir_packer = ir_packer or IrPacker(models / OV_WEIGHTS)
            entry["artifact"] = _add_openvino_ir(root, compiled_dir, art, sid, ir_packer)
        else:  # other formats are copied with their files as compiled
            rel_dir = f"models/stitch_{sid:03d}"
            for relf in art.get("files") or {art["path"]: None}:
                (root / rel_dir / relf).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(compiled_dir / relf, root / rel_dir / relf)
            rel = f"{rel_dir}/{art['path']}"
            entry["artifact"] = {"format": _spec(compiled).artifact_format,
                                 "path": rel, "compiled_sha256": art.get("sha256") or art.get("source_sha256")}
        stitches.append(entry)
    index = packer.close()
    atomic_write_text(models / "weights.json", json.dumps(index, separators=(",", ":")))
    weights = {"file": "models/weights.bin", "index": "models/weights.json",
               "unique_bytes": packer.unique_bytes, "tensors": len(index["tensors"])}
    if ir_packer is not None:
        weights = _openvino_weights(models, ir_packer, packer)
    from ..runtime.integrity import sha256_file

    reference = _reference(compiled, compiled_dir)
    for entry in stitches:
        entry["artifact"]["sha256"] = sha256_file(root / entry["artifact"]["path"])
        if check_outputs and entry["artifact"]["format"] == "onnx":
            entry["bundle_check"] = _check_same_outputs(
                compiled_dir / entry["artifact"]["source"], root / entry["artifact"]["path"], spec,
                reference, entry["id"])
        elif check_outputs and entry["artifact"]["format"] == "openvino-ir":
            entry["bundle_check"] = _check_same_outputs_openvino(
                compiled_dir / entry["artifact"]["source"], root / entry["artifact"]["path"],
                root / entry["artifact"]["weights"], reference, entry["id"])
    tensorrt = None
    if device_build or _spec(compiled).built_on_device:
        tensorrt = _copy_device_build(root, compiled, compiled_dir, plan)
    reference_file = _int8_reference(root, compiled, compiled_dir, plan["include"], tensorrt)
    _copy_runtime(root)
    target_info = {"name": target, "backend": compiled.get("backend"), "precision": compiled.get("precision"),
                   "runtime": compiled.get("runtime"), "verified_on_hardware": compiled.get("verified_on_hardware"),
                   "verified_on": (compiled.get("target_spec") or {}).get("verified_on_hardware"),
                   "device": (compiled.get("target_spec") or {}).get("device"),
                   "engines_built": compiled.get("engines_built"), "device_build_required": device_build,
                   "tensorrt": tensorrt}
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
            "path": reference_file, "thresholds": (compiled.get("target_spec") or {}).get("validation"),
            "use": "re-validation of int8 stitches on a CPU lacking what they were validated with"},
        # How the latencies above were measured, and so how the runtime should run to see them.
        "session": _session(compiled, profiles, [plan["artifacts"][sid].get("sha256", "") for sid in plan["include"]]),
    }
    _write_docs(root, manifest)
    return manifest


# ---- OpenVINO IR ------------------------------------------------------------------------------
OV_WEIGHTS = "openvino_weights.bin"


def _add_openvino_ir(root: Path, compiled_dir: Path, art: dict, sid: int, ir_packer: IrPacker) -> dict:
    """``models/stitch_<id>.xml`` pointing into the shared ``models/openvino_weights.bin``, with
    the settings the runtime must compile it with (device, pinned inference precision)."""
    src = compiled_dir / art["path"]
    rel = f"models/stitch_{sid:03d}.xml"
    ir_packer.add_ir(sid, src, src.with_suffix(".bin"), root / rel)
    info = art.get("info") or {}
    return {"format": "openvino-ir", "path": rel, "weights": f"models/{OV_WEIGHTS}",
            "compiled_sha256": art.get("sha256"), "source": art["path"],
            "openvino": {"device": info.get("device") or "CPU",
                         "inference_precision_hint": info.get("inference_precision_hint"),
                         "performance_hint": info.get("performance_hint")}}


def _openvino_weights(models: Path, ir_packer: IrPacker, packer: WeightPacker) -> dict:
    """The manifest's ``weights`` for an OpenVINO bundle: the shared IR weights file and its real
    bytes (the ONNX Runtime weights files stay only when ONNX graphs were bundled too)."""
    stats = ir_packer.close()
    if not packer.tensors:
        for name in ("weights.bin", "weights.json"):
            (models / name).unlink()
    per = stats["per_stitch_bytes"]
    return {"file": f"models/{OV_WEIGHTS}", "format": "openvino-ir", "index": None,
            "unique_bytes": stats["unique_bytes"], "consts": stats["consts"],
            "unique_consts": stats["unique_consts"], "compiled_bytes_per_stitch": per,
            "compiled_bytes_total": int(sum(per.values())),
            "note": "stored once on disk; OpenVINO's CPU plugin prepares its own copy of each loaded "
                    "stitch's weights in memory"}


def _check_same_outputs_openvino(original: Path, bundled: Path, weights: Path, reference, sid: int) -> dict:
    """The re-pointed IR must compute exactly what the compiled one did (OpenVINO on the CPU, f32)."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("openvino") is None:
        return {"skipped": "openvino is not installed where the bundle was written"}
    import openvino as ov

    if reference is None or "x" not in reference:
        return {"skipped": "no compile reference inputs"}
    x = reference["x"].astype(np.float32)
    core = ov.Core()
    outs = []
    for model in (core.read_model(str(original)), core.read_model(str(bundled), str(weights))):
        static = not model.inputs[0].get_partial_shape().is_dynamic and model.inputs[0].shape[0] == 1
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        req = compiled.create_infer_request()
        step = 1 if static else len(x)
        outs.append(np.concatenate([np.asarray(req.infer({0: x[i:i + step]})[compiled.outputs[0]]).copy()
                                    for i in range(0, len(x), step)]))
    diff = float(np.max(np.abs(outs[0] - outs[1])))
    if diff > 1e-6:
        raise BundleError(f"bundled IR {bundled.name} differs from its compiled artifact by {diff:.3g}",
                          hint="this is a bug in the bundle writer; please report it")
    check = {"max_abs_diff_vs_compiled": diff, "input": f"compile reference inputs ({len(x)})",
             "runtime": f"openvino {ov.get_version()} CPU f32"}
    ref = reference.get(f"ref_{sid}")
    if ref is not None:
        check["max_abs_error_vs_reference"] = float(np.max(np.abs(outs[1] - ref)))
    return check


def _reference(compiled: dict, compiled_dir: Path):
    """The compile stage's reference inputs and fp32 outputs (reference.npz), if it wrote them."""
    import numpy as np

    rel = compiled.get("reference")
    if not rel or not (compiled_dir / rel).is_file():
        return None
    with np.load(compiled_dir / rel, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _check_same_outputs(original: Path, repacked: Path, spec: dict, reference, sid: int) -> dict:
    """The repacked graph must give exactly what the compiled one gave (and say how far both are
    from the fp32 reference the artifact was validated against)."""
    import numpy as np
    import onnxruntime as ort

    name = spec.get("name", "pixels")
    if reference is not None and "x" in reference:
        x, what = reference["x"].astype(np.float32), f"compile reference inputs ({len(reference['x'])})"
    else:
        shape = [1 if not isinstance(d, int) else d for d in spec.get("shape", [1, 3, 224, 224])]
        x, what = np.random.default_rng(0).standard_normal(shape).astype(np.float32), "standard normal, seed 0"
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
            for p in (original, repacked)]
    diff = float(np.max(np.abs(outs[0] - outs[1])))
    if diff > 1e-6:
        raise BundleError(f"bundled graph {repacked.name} differs from its compiled artifact by {diff:.3g}",
                          hint="this is a bug in the bundle writer; please report it")
    check = {"max_abs_diff_vs_compiled": diff, "input": what, "runtime": f"onnxruntime {ort.__version__}"}
    ref = None if reference is None else reference.get(f"ref_{sid}")
    if ref is not None:
        check["max_abs_error_vs_reference"] = float(np.max(np.abs(outs[1] - ref)))
    return check


def _copy_engine(root: Path, compiled_dir: Path, art: dict, sid: int) -> dict:
    """A TensorRT plan: copied when compile built it (with its build record), else built on the device."""
    engine = {"path": f"engines/stitch_{sid:03d}.plan", "built": False}
    src = compiled_dir / art["path"]
    meta = src.with_name(src.name + ".json")
    if art.get("built") and src.is_file() and meta.is_file():
        (root / "engines").mkdir(exist_ok=True)
        shutil.copy2(src, root / engine["path"])
        shutil.copy2(meta, root / (engine["path"] + ".json"))
        engine["built"] = True
    return engine


def _add_device_engines(root: Path, manifest: dict, src: Path) -> None:
    """Engines built (and validated) on the device by the device loop: ship them as built."""
    for entry in manifest["stitches"]:
        eng = entry.get("engine")
        if not eng or not (src / eng["path"]).is_file() or not (src / (eng["path"] + ".json")).is_file():
            continue
        (root / eng["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / eng["path"], root / eng["path"])
        shutil.copy2(src / (eng["path"] + ".json"), root / (eng["path"] + ".json"))
        eng["built"] = True
    if (src / "validation.json").is_file():
        shutil.copy2(src / "validation.json", root / "validation.json")


def _copy_device_build(root: Path, compiled: dict, compiled_dir: Path, plan: dict) -> dict:
    """TensorRT: engines are built on the device. Ship compile's build kit, re-pointed at the
    bundle's graphs (models/), so ``python3 build_engines.py kit.json`` works from the bundle root."""
    kit_path = compiled_dir / "kit.json"
    kit = json.loads(kit_path.read_text()) if kit_path.is_file() else {}
    by_id = {int(p["id"]): p for p in kit.get("plans", []) if "id" in p}
    plans = []
    from ..runtime.integrity import sha256_file

    for sid in plan["include"]:
        p = dict(by_id.get(sid) or {})
        if not p:
            continue
        p["onnx"] = f"models/stitch_{sid:03d}.onnx"
        p["engine"] = f"engines/stitch_{sid:03d}.plan"
        p["layer_info"] = f"engines/stitch_{sid:03d}.layers.json"
        p["timing_cache"] = "timing.cache"
        p["onnx_sha256"] = sha256_file(root / p["onnx"])
        # A weight-stripped engine is refitted from the graph above, whose initializers point into
        # the bundle's one shared weights file; by name from its index where the parser cannot.
        p["shared_weights"] = {"index": "models/weights.json", "file": "models/weights.bin"}
        plans.append(p)
    if kit:
        kit.update(plans=plans, timing_cache="timing.cache")
        # build_engines.py validates every engine it builds against the fp32 reference with the
        # target's gates: ship both (the kit in the compile folder finds them next to it).
        kit["thresholds"] = (compiled.get("target_spec") or {}).get("validation")
        kit["reference"] = _write_device_reference(root, compiled, compiled_dir, plan["include"])
        atomic_write_json(root / "kit.json", kit)
        lines = ["#!/bin/sh", "# Run on the target device, from this folder.", "set -e", "mkdir -p engines"]
        try:
            import shlex

            from ..backends.tensorrt import trtexec_command

            lines += [shlex.join(trtexec_command(p, f"engines/stitch_{p['id']:03d}.times.json")) for p in plans]
            atomic_write_text(root / "trtexec.sh", "\n".join(lines) + "\n")
        except ImportError:
            pass
    for rel in ("build_engines.py", "README_DEVICE.md", *(compiled.get("build_kit") or [])):
        if (compiled_dir / rel).is_file() and rel not in ("kit.json", "trtexec.sh"):
            shutil.copy2(compiled_dir / rel, root / Path(rel).name)
    if (root / "README_DEVICE.md").is_file():
        atomic_write_text(root / "README_DEVICE.md",
                          (root / "README_DEVICE.md").read_text() + _DEVICE_README_BUNDLE)
    if (compiled_dir / "timing.cache").is_file():
        shutil.copy2(compiled_dir / "timing.cache", root / "timing.cache")
    runtime = compiled.get("runtime") or {}
    version = kit.get("tensorrt_planned") or (runtime.get("tensorrt") if isinstance(runtime, dict) else None)
    if not version and isinstance(runtime, dict) and runtime.get("runtime") == "tensorrt":
        version = runtime.get("version")
    device = (compiled.get("target_spec") or {}).get("device") or {}
    # What the device must be: compared with the runtime's fingerprint by TensorRT release, compute
    # capability and module family (tensorrt.device.expectation_problems); "gpu" is the target's
    # name for people, never compared with the CUDA device name.
    return {"version": version, "gpu": kit.get("device") or compiled.get("gpu"),
            "compute_capability": device.get("compute_capability"),
            "module": kit.get("module"), "jetpack": kit.get("jetpack"), "l4t": kit.get("l4t"),
            "engines": {str(p["id"]): {"weights": p.get("weights", "full"),
                                       "why_full": p.get("weights_full_reason")} for p in plans},
            "kit": "kit.json" if kit else None, "timing_cache": "timing.cache",
            "note": "engines are built on the device (python3 build_engines.py kit.json); a plan built "
                    "for another TensorRT version or GPU is refused (esta_runtime.tensorrt.check)"}


def _int8_reference(root: Path, compiled: dict, compiled_dir: Path, ids: list[int],
                    tensorrt: dict | None) -> str | None:
    """The reference outputs an int8 bundle's runtime re-validates with (reference.npz): written
    for int8 CPU bundles, and already there for TensorRT bundles (the device build kit's)."""
    if tensorrt is not None:
        return "reference.npz" if (root / "reference.npz").is_file() else None
    if compiled.get("precision") != "int8":
        return None
    return _write_device_reference(root, compiled, compiled_dir, ids)


MAX_REFERENCE_BYTES = 8 << 20  # reference inputs shipped for on-device validation
MIN_REFERENCE_SAMPLES = 8


def _write_device_reference(root: Path, compiled: dict, compiled_dir: Path, ids: list[int]) -> str | None:
    """``reference.npz`` for build_engines.py: the compile stage's reference inputs ``x`` (and
    labels ``y``) and the fp32 logits ``ref_<id>`` of the bundled stitches, at most
    MAX_REFERENCE_BYTES of inputs (never fewer than MIN_REFERENCE_SAMPLES samples)."""
    import numpy as np

    ref = _reference(compiled, compiled_dir)
    if ref is None or "x" not in ref:
        return None
    x = ref["x"]
    per = max(1, x[:1].nbytes)
    n = min(len(x), max(MIN_REFERENCE_SAMPLES, MAX_REFERENCE_BYTES // per))
    arrays = {"x": x[:n]}
    if "y" in ref:
        arrays["y"] = ref["y"][:n]
    arrays.update({f"ref_{sid}": ref[f"ref_{sid}"][:n] for sid in ids if f"ref_{sid}" in ref})
    from ..fsutil import atomic_path

    with atomic_path(root / "reference.npz", suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return "reference.npz"


_DEVICE_README_BUNDLE = """
## In this bundle
`python3 build_engines.py kit.json` builds each engine into `engines/`, then runs it on
`reference.npz` (the compile stage's reference inputs and fp32 logits) and applies the target's
gates (`thresholds` in kit.json: fp16 = worst-sample cosine + top-1 agreement; int8 = top-1
agreement). Each verdict goes into `engines/stitch_<id>.plan.json` and all of them into
`validation.json`; an engine that fails is reported and never used. `--check` re-validates.
Only then do `app.py` (the runtime's `engine="auto"`) and `profile_device.py` run the engines;
`profile_device.py` refuses (exit 2) while an engine is missing, stale or invalid, and its records
say runtime "tensorrt", the GPU, and that host<->device copies are included in each timing.
Until the engines are ready, `app.py` runs the ONNX graphs with ONNX Runtime and says so.
None of this has been verified on hardware.
"""


def _copy_runtime(root: Path) -> None:
    from ..runtime.ship import copy_runtime

    copy_runtime(root / RUNTIME_DIR)  # with its tensorrt/ package, as it is
    for name in ("app.py", "profile_device.py"):
        shutil.copy2(TEMPLATES / name, root / name)


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _weights_desc(manifest: dict) -> str:
    w = manifest.get("weights") or {}
    if w.get("format") == "openvino-ir":
        return (f"their OpenVINO IR weights stored once on disk (`{w['file']}`, {w['unique_bytes']:,} bytes; "
                f"the compiled IRs held {w['compiled_bytes_total']:,} bytes, one `.bin` each), which every "
                "`models/stitch_<id>.xml` points into; in memory OpenVINO's CPU plugin prepares each "
                "loaded stitch's weights itself")
    return f"their weights stored once (`{w.get('file', 'models/weights.bin')}`, {w.get('unique_bytes', 0):,} bytes)"


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
    verified = t.get("verified_on") if t.get("verified_on_hardware") else t.get("verified_on_hardware")
    device_build = ""
    if t.get("tensorrt"):
        trt = t["tensorrt"]
        device_build = (f"\n## TensorRT engines (built on the device)\nThe ONNX graphs are in `models/`. Build "
                        f"the engines into `engines/` with `python3 build_engines.py kit.json` (or `sh trtexec.sh`) "
                        f"on the device. Planned for TensorRT {trt.get('version')} on {trt.get('gpu')}; timing "
                        f"cache `{trt.get('timing_cache')}`. A plan built for another TensorRT version or GPU is "
                        f"refused (`esta_runtime.tensorrt.check`), and so is one that failed validation "
                        f"against `reference.npz` (see README_DEVICE.md). Once they are built and valid, "
                        f"`app.py` and `profile_device.py` run the engines; until then `app.py` runs the "
                        f"ONNX graphs with ONNX Runtime (and says so) and `profile_device.py` refuses. "
                        f"Not verified on hardware.\n")
    backend = BACKEND_TABLE.get(t.get("backend") or "onnxruntime")
    runtime_req = backend.pip if backend is not None else f"{t.get('backend')}"
    text = (TEMPLATES / "README.md.tmpl").read_text().format(
        target=t["name"], num_stitches=len(manifest["stitches"]), backend=t.get("backend"),
        precision=t.get("precision"),
        verified=(f"the compiled artifacts were validated on {verified}" if isinstance(verified, str) else
                  "validated on the build machine" if verified else "not verified on hardware"),
        runtime_req=runtime_req, stitch_rows="\n".join(rows), weights_desc=_weights_desc(manifest),
        excluded=("\nExcluded (failed validation or not compiled):\n" + excluded) if excluded else "",
        input_desc=f"{spec.get('name')} {spec.get('shape')} {spec.get('layout')} {spec.get('dtype')}, "
                   f"mean {spec.get('mean')}, std {spec.get('std')}",
        device_build=device_build)
    atomic_write_text(root / "README.md", text)
