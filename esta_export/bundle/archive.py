"""Bundles as one .tar.gz, and an extractor that refuses anything leaving the destination.

Writing: regular files and folders only, owner and times normalized, so the archive holds nothing
but the bundle. Reading: an archive may come from anywhere, so before any byte is written every
member is checked: no absolute paths, no ``..``, no links (symbolic or hard) that resolve outside
the bundle, no devices or FIFOs. Extraction goes to a temporary folder renamed into place at the
end, and Python's ``data`` extraction filter (3.12+, backported to 3.8.17+) runs as a second guard.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import BundleError, UnsafeFileError
from ..fsutil import atomic_path


def write_archive(bundle_dir: str | Path, out: str | Path, arcname: str | None = None) -> Path:
    """Pack ``bundle_dir`` into ``out`` (.tar.gz), atomically."""
    bundle_dir, out = Path(bundle_dir), Path(out)
    arcname = arcname or bundle_dir.name

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isfile() or info.isdir()) or "__pycache__" in info.name:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(str(bundle_dir), arcname=arcname, filter=clean)
    return out


def _check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeFileError(f"archive member {name!r} has an absolute path",
                              hint="refusing to extract; get the bundle from a trusted source")
    if ".." in parts:
        raise UnsafeFileError(f"archive member {name!r} contains '..'",
                              hint="refusing to extract; get the bundle from a trusted source")
    if m.isdev() or m.ischr() or m.isblk() or m.isfifo():
        raise UnsafeFileError(f"archive member {name!r} is a device or FIFO",
                              hint="a bundle holds regular files only; refusing to extract")
    if m.issym() or m.islnk():
        link = m.linkname.replace("\\", "/")
        # Symlinks resolve relative to their own folder, hard links relative to the archive root.
        base = posixpath.dirname("/".join(parts)) if m.issym() else ""
        target = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or target == ".." or target.startswith("../"):
            kind = "symlink" if m.issym() else "hard link"
            raise UnsafeFileError(f"archive member {name!r} is a {kind} to {m.linkname!r} outside the bundle",
                                  hint="refusing to extract; get the bundle from a trusted source")
    elif not (m.isfile() or m.isdir()):
        raise UnsafeFileError(f"archive member {name!r} has an unsupported type",
                              hint="a bundle holds regular files and folders only")


def extract_archive(path: str | Path, dest: str | Path) -> Path:
    """Extract a bundle archive into ``dest`` (a folder that must not exist yet); return the bundle folder."""
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise BundleError(f"bundle archive {path} not found", hint="check the path")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} already exists", hint="extract into a new folder")
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BundleError(f"{path} is not a readable tar archive ({first})", hint="re-download the bundle") from None
    with tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                tar.extractall(tmp, members=members, **kwargs)
            except getattr(tarfile, "FilterError", tarfile.TarError) as err:  # the second guard caught something we did not
                raise UnsafeFileError(f"archive {path.name} is unsafe ({err})",
                                      hint="refusing to extract; get the bundle from a trusted source") from None
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    tops = [p for p in dest.iterdir()]
    if len(tops) == 1 and tops[0].is_dir() and (tops[0] / "manifest.json").is_file():
        return tops[0]
    return dest
