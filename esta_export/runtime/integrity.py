"""Checksums: every bundle file is compared with the sha256 the manifest recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import IntegrityError, UnsafeBundleError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing paths that leave the bundle (absolute, ``..``, symlinks out)."""
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise UnsafeBundleError(f"bundle path {rel!r} leaves the bundle folder",
                                hint="the manifest was tampered with; re-create the bundle")
    path = root / rel
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise UnsafeBundleError(f"bundle file {rel!r} resolves outside the bundle (a symlink?)",
                                hint="re-copy the bundle without links") from None
    return path


def verify_file(root: Path, rel: str, sha256: str, size: int | None = None) -> None:
    path = resolve_inside(root, rel)
    if not path.is_file():
        raise IntegrityError(f"bundle file {rel} is missing", hint="re-copy the complete bundle")
    if size is not None and path.stat().st_size != size:
        raise IntegrityError(f"bundle file {rel} has {path.stat().st_size} bytes, the manifest "
                             f"recorded {size}", hint="the file is truncated or modified; re-copy the bundle")
    if sha256_file(path) != sha256:
        raise IntegrityError(f"bundle file {rel} does not match its sha256 in the manifest",
                             hint="the file was modified or corrupted; re-copy the bundle")


def verify_all(root: Path, manifest: dict) -> int:
    """Check every file the manifest lists; return how many bytes were hashed."""
    total = 0
    for entry in manifest["files"]:
        verify_file(root, entry["path"], entry["sha256"], entry.get("size"))
        total += int(entry.get("size") or 0)
    return total
