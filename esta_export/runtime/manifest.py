"""Bundle manifest: schema name, version, and the reader that refuses what it cannot understand.

The writer (``esta_export.bundle.manifest``) and the device runtime share these constants, so a
bundle and its runtime agree on one definition. Minor versions add optional fields (readers ignore
unknown keys); a new major version changes meaning, so an older reader refuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import BundleError, ManifestVersionError

SCHEMA = "esta-export/bundle"
SCHEMA_VERSION = "1.0"
MANIFEST = "manifest.json"


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise BundleError(f"manifest schema_version {version!r} is not MAJOR.MINOR",
                          hint="re-create the bundle with esta-export bundle") from None


def check_manifest(manifest: Any, where: str = MANIFEST) -> dict:
    """Return ``manifest`` if this runtime can read it; raise a one-line error otherwise."""
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not an esta-export bundle manifest (schema "
                          f"{manifest.get('schema') if isinstance(manifest, dict) else None!r})",
                          hint="point to the folder 'esta-export bundle' wrote")
    found = manifest.get("schema_version", "")
    if _major(found) > _major(SCHEMA_VERSION):
        raise ManifestVersionError(
            f"{where} has schema_version {found}, newer than this runtime reads ({SCHEMA_VERSION})",
            hint="update the runtime (copy esta_runtime from a newer bundle or upgrade esta-export)")
    for key in ("stitches", "files", "input"):
        if key not in manifest:
            raise BundleError(f"{where} lacks '{key}'", hint="re-create the bundle with esta-export bundle")
    return manifest


def load_manifest(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST} in {bundle_dir}",
                          hint="the bundle is incomplete or this is not a bundle folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{path} is not valid JSON ({err})",
                          hint="re-create or re-copy the bundle") from None
    return check_manifest(manifest, str(path))
