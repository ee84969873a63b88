"""Bundle manifest schema: the writer's side. The reader lives in the runtime (shared constants).

Layout of ``manifest.json`` (schema "esta-export/bundle", version 1.0)::

    schema, schema_version, tool_version, created
    supernet   {sha256, space, source_format}
    target     {name, backend, precision, runtime{...}, verified_on_hardware,
                device_build_required, tensorrt{version, gpu, timing_cache} | null}
    input      {name, shape, layout "NCHW", dtype, image_size, mean, std, labels, resize}
    output     {name, num_classes}
    weights    {file, index, unique_bytes, tensors} | null
    selection  {source, note, selected}
    stitches   [{id, route, flops, params, latency{median, p90, ..., source, provenance},
                 accuracy, accuracy_source, artifact{format, path, sha256, compiled_sha256},
                 validation{...}, bundle_check{...}}]
    excluded   [{id, route, reason}]
    files      [{path, sha256, size}]   every file of the bundle except manifest.json
"""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.integrity import sha256_file
from ..runtime.manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, check_manifest, load_manifest

__all__ = ["MANIFEST", "SCHEMA", "SCHEMA_VERSION", "check_manifest", "load_manifest", "file_table",
           "input_spec", "DEVICE_BUILD_FIELDS"]

# ``target`` fields a backend whose engines are built on the device fills in (its
# ``bundle_device_build`` hook); null in every other bundle.
DEVICE_BUILD_FIELDS = {"tensorrt": None}


def file_table(root: Path) -> list[dict]:
    """sha256 and size of every file under ``root`` (sorted), except the manifest itself."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST or name.endswith(".pyc"):
                continue
            out.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})
    return out


def input_spec(export_input: dict) -> dict:
    """The export's input spec with the fields the runtime's preprocessing needs, made explicit."""
    spec = dict(export_input)
    spec.setdefault("name", "pixels")
    spec.setdefault("layout", "NCHW")
    spec.setdefault("dtype", "float32")
    if "image_size" not in spec and spec.get("shape"):
        spec["image_size"] = spec["shape"][-1]
    spec.setdefault("mean", [0.0, 0.0, 0.0])
    spec.setdefault("std", [1.0, 1.0, 1.0])
    spec.setdefault("labels", None)
    # How a raw image reaches image_size: the runtime's numpy resize (half-pixel bilinear).
    spec.setdefault("resize", "bilinear")
    return spec
