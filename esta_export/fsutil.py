"""Crash-safe file writing and hashing shared by every stage.

Rule of the project: a file is written under a temporary name in the same folder, flushed,
fsynced and renamed into place, so a crash leaves either the old file or the new one, never a
half-written file under the final name. A stage's summary file (export.json, compile.json, ...)
is written last, so its presence means the stage finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError, ResourceError


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp's 0600 would make outputs unreadable to others
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file the tool wrote; a missing or corrupt one is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}", hint="run the stage that writes it first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise InputError(f"{what} {path} is not valid JSON ({reason})",
                         hint="re-run the stage that writes it (with --fresh)") from None


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create (or reuse) an output folder and check it is writable."""
    if not str(path).strip():
        raise InputError("the output folder is an empty path", hint="give --out a folder name")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output path {path} exists and is not a folder",
                         hint="choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe.", delete=True)
        probe.close()
    except OSError as err:
        raise InputError(f"cannot write to output folder {path} ({err.strerror})",
                         hint="choose a writable --out") from None
    return path


def check_free_space(path: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Refuse to start work that cannot fit on the disk (with a 10% margin)."""
    path = Path(path)
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = os.statvfs(probe).f_bavail * os.statvfs(probe).f_frsize
    if needed_bytes * 1.1 > free:
        raise ResourceError(
            f"{what} needs about {needed_bytes / 1e6:.0f} MB but only {free / 1e6:.0f} MB are free "
            f"under {probe}", hint="free disk space, choose another --out, or export fewer --stitches")


def is_within(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """True when ``child`` resolves inside ``parent`` (symlinks followed)."""
    try:
        Path(child).resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False
