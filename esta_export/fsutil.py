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
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import InputError, ResourceError
from .runtime.integrity import sha256_file  # noqa: F401  (the one copy; the runtime ships it)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, but a file is written there",
                         hint="give a file path (e.g. DIR/name.json), not a folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path.parent} is a file, but {path.name} is written inside it as a folder",
                         hint="choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp's 0600 would make outputs unreadable to others
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
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
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        # Never publish a NaN or an infinity: a reader downstream would take it for a number.
        from .errors import FormatError
        raise FormatError(f"refusing to write {Path(path).name}: a value in it is NaN or infinite",
                          hint="an input holds a non-finite number; fix that input and re-run") from None
    atomic_write_text(path, text + "\n")


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entry for a renamed file), ignoring what cannot be."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file the tool wrote; a missing, special, huge or corrupt one is an InputError naming it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{what} not found: {path}", hint="run the stage that writes it first")
    return read_json_file(path, what, hint="re-run the stage that writes it (with --fresh)")


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create (or reuse) an output folder and check it is writable (and not a system folder)."""
    path = check_out_dir(path, flag)
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


# -- issue 16: inputs that are not plain files, outputs that are not safe to write ----------------
# The rules every stage follows, in one place:
#   * an input is opened only after it is known to be a regular file of a sane size (a FIFO would
#     block forever, /dev/zero would be read until memory runs out);
#   * an output folder is never a system folder, never one of the run's inputs, and never holds
#     an input under a name the stage writes;
#   * a path taken from a file (a target's name, an artifact path in compile.json) is confined to
#     the folder it belongs to;
#   * one writer per output folder (``output_lock``);
#   * a stage that fails leaves the previous complete output exactly as it was: the new output is
#     written beside it and swapped in only on success (``stage_output``).

MAX_JSON_BYTES = 256 << 20      # a summary, manifest, selection or run config larger than this is not ours
LOCK_NAME = ".esta-export.lock"
STAGING_SUFFIX = ".staging"
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32",
                 "/lib64", "/libx32", "/run", "/var/lib", "/var/run", "/snap")
_SYSTEM_EXACT = ("/", "/home", "/root", "/tmp", "/var", "/var/tmp", "/opt", "/srv", "/mnt", "/media")


def check_input_file(path: str | os.PathLike, what: str, *, max_bytes: int | None = None,
                     error: type = InputError, hint: str | None = None) -> Path:
    """``path`` as a regular, readable file of at most ``max_bytes``; one line otherwise.

    Checked with ``stat`` before anything opens the file, so FIFOs, sockets and devices are
    refused without blocking or reading them.
    """
    import stat as _stat

    path = Path(path)
    if not str(path).strip():
        raise error(f"{what} is an empty path", hint=hint or "give a file name")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}", hint=hint or "check the path") from None
    except OSError as err:
        raise error(f"cannot read {what} {path} ({err.strerror})", hint=hint or "check the path and its permissions") from None
    if _stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a folder, not a file", hint=hint or "give the path of the file itself")
    if not _stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if _stat.S_ISFIFO(st.st_mode) else "a socket" if _stat.S_ISSOCK(st.st_mode)
                else "a device" if (_stat.S_ISCHR(st.st_mode) or _stat.S_ISBLK(st.st_mode)) else "not a regular file")
        raise error(f"{what} {path} is {kind}, not a regular file",
                    hint=hint or "give a regular file (copy the data into one first)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB "
                    f"such a file can hold", hint=hint or "give the file esta-export wrote, not another one")
    if not os.access(path, os.R_OK):
        raise error(f"cannot read {what} {path} (permission denied)", hint="fix its permissions")
    return path


def read_json_file(path: str | os.PathLike, what: str, *, error: type = InputError,
                   hint: str = "re-run the stage that writes it", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Any JSON file a user or a stage hands us: checked to be a plain file of sane size first."""
    path = check_input_file(path, what, max_bytes=max_bytes, error=error, hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except _NonFinite as err:
        raise error(f"{what} {path} holds {err.args[0]}, which is not a number",
                    hint=hint) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise error(f"{what} {path} is not valid JSON ({reason})", hint=hint) from None
    except OSError as err:
        raise error(f"cannot read {what} {path} ({err.strerror})", hint=hint) from None


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str):
    # Python's json accepts the non-standard NaN, Infinity and -Infinity; a value that means a
    # latency, an accuracy or a size must never be one of them.
    raise _NonFinite(name)


def is_system_dir(path: str | os.PathLike, *, for_file: bool = False) -> bool:
    """A folder no stage may fill: "/", system trees, and (for a stage's folder, not one file
    written into it) the bare home, /tmp, /var, /opt, ... themselves."""
    p = os.path.realpath(os.path.abspath(path))
    home = os.path.realpath(os.path.expanduser("~"))
    if p == "/" or (not for_file and (p in _SYSTEM_EXACT or p == home)):
        return True
    return any(p == r or p.startswith(r + "/") for r in _SYSTEM_ROOTS)


def check_out_dir(path: str | os.PathLike, flag: str = "--out", *, for_file: bool = False) -> Path:
    """Refuse an output folder that is empty, the file-system root, a system folder or a home
    (``for_file``: the folder one output file goes into; only "/" and system trees are refused)."""
    if not str(path).strip():
        raise InputError("the output folder is an empty path", hint=f"give {flag} a folder name")
    if is_system_dir(path, for_file=for_file):
        raise InputError(f"refusing to write into {os.path.realpath(os.path.abspath(path))}: a system folder "
                         f"cannot be an output folder", hint=f"give {flag} a folder of its own, e.g. {flag} out/run1")
    return Path(path)


def check_not_input(out: str | os.PathLike, reads: dict[str, str | os.PathLike | None], *,
                    writes: Callable[[str], bool] | None = None, flag: str = "--out") -> None:
    """Refuse an output path that is, contains or lies inside something the run reads.

    ``reads`` maps a description ("the supernet", "--calibration") to a path. An input inside the
    output folder is refused only when the stage writes that name (``writes(relative path)``;
    every name when ``writes`` is None): a supernet kept in the output folder is fine, one named
    ``weights.bin`` is not.
    """
    out_r = Path(os.path.realpath(os.path.abspath(out)))
    for what, p in reads.items():
        if p is None or not str(p).strip():
            continue
        r = Path(os.path.realpath(os.path.abspath(p)))
        if r == out_r:
            raise InputError(f"{flag} {out} is also {what}", hint=f"choose an {flag} that is not one of the inputs")
        if r.is_dir() and _inside(out_r, r):
            raise InputError(f"{flag} {out} lies inside {what} ({p})",
                             hint=f"choose an {flag} outside the folders the run reads")
        if _inside(r, out_r):
            rel = r.relative_to(out_r).as_posix()
            if writes is None or writes(rel):
                raise InputError(f"{flag} {out} would overwrite {what} ({p})",
                                 hint=f"choose another {flag}, or move the input out of that folder")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def confined(root: str | os.PathLike, rel: Any, what: str, *, error: type = InputError,
             hint: str = "the file was edited or damaged; re-run the stage that writes it") -> Path:
    """``root / rel`` for a relative path from a file, refusing anything that leaves ``root``."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise error(f"{what} {rel!r:.80} is not a file name", hint=hint)
    if os.path.isabs(rel) or ".." in Path(rel).parts or "\\" in rel:
        raise error(f"{what} {rel!r:.80} leaves its folder {root}", hint=hint)
    path = Path(root) / rel
    if not _inside(Path(os.path.realpath(path)), Path(os.path.realpath(root))):
        raise error(f"{what} {rel!r:.80} resolves outside {root} (a symlink?)", hint=hint)
    return path


def safe_name(name: Any, what: str, *, error: type = InputError, hint: str = "use letters, digits, '-', '_' and '.'") -> str:
    """A name that becomes one path component (a target name): no separators, no '..'."""
    import re as _re

    if not isinstance(name, str) or not _re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}", name) or ".." in name:
        raise error(f"{what} {name!r:.80} cannot be used as a folder name", hint=hint)
    return name


# -- one writer per output folder ----------------------------------------------------------------
def _lock_wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get("ESTA_EXPORT_LOCK_WAIT", "10")))
    except ValueError:
        return 10.0


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for one writer; a second waits a little, then refuses.

    The lock file lives in the folder while it is held and is removed on release (checked by
    inode, so a writer that waited on a file already unlinked takes the lock again properly).
    The lock is re-entrant within a process (the main job holds OUT's while a stage takes its own).
    """
    import fcntl
    import time as _time

    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    path = folder / LOCK_NAME
    deadline = _time.monotonic() + _lock_wait_s()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if _time.monotonic() >= deadline:
                        raise InputError(f"another esta-export run is writing to {what} {folder}",
                                         hint="wait for it to finish, or choose another --out") from None
                    _time.sleep(0.1)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)          # the holder before us removed this file: lock the current one
    _HELD[key] = 1
    try:
        yield
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        os.close(fd)


_HELD: dict[str, int] = {}


# -- swap on success -----------------------------------------------------------------------------
def staging_path(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.parent / f".{final.name}{STAGING_SUFFIX}"


@contextlib.contextmanager
def stage_output(final: str | os.PathLike, done: str, *, copy: Callable[[str], bool] = lambda rel: False
                 ) -> Iterator[Path]:
    """The folder a stage writes its new output into.

    When ``final`` holds no complete output (no ``done`` file), there is nothing to protect: the
    stage works in ``final`` itself and a re-run after a crash resumes there. When it does, the
    stage works in a hidden folder beside it, seeded with hard links of ``final``'s files (copies
    for the names ``copy(rel)`` selects: files the stage changes in place), and the two are
    swapped only when the block succeeds; on failure the staging folder is removed and ``final``
    is exactly as it was.
    """
    final = Path(final)
    recover_swap(final)
    if not (final / done).is_file():
        final.mkdir(parents=True, exist_ok=True)
        yield final
        return
    stage = staging_path(final)
    if stage.exists():
        shutil.rmtree(stage)
    _seed(final, stage, copy)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    swap_into_place(stage, final)


def _seed(src: Path, dst: Path, copy: Callable[[str], bool]) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        (dst / rel_dir).mkdir(parents=True, exist_ok=True)
        dirnames[:] = [d for d in dirnames if not d.endswith(STAGING_SUFFIX)]
        for name in filenames:
            if name == LOCK_NAME or (name.startswith(".") and ".tmp" in name):
                continue
            s, d = Path(dirpath) / name, dst / rel_dir / name
            rel = (rel_dir / name).as_posix()
            if os.path.islink(s):
                os.symlink(os.readlink(s), d)
            elif copy(rel):
                shutil.copy2(s, d)
            else:
                try:
                    os.link(s, d)
                except OSError:
                    shutil.copy2(s, d)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def swap_into_place(new: Path, final: Path) -> None:
    """Put folder ``new`` where ``final`` is; the old ``final`` is removed afterwards."""
    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
    elif _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)   # now holds the old output
    else:
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(new, final)   # a crash between the two renames is undone by recover_swap
        shutil.rmtree(old, ignore_errors=True)
    _fsync(final.parent)


def recover_swap(final: str | os.PathLike) -> None:
    """Undo a swap interrupted between its two renames (only the old output exists, aside)."""
    final = Path(final)
    old = final.parent / f".{final.name}.old"
    if old.is_dir() and not final.exists():
        os.replace(old, final)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def locked_file(path: str | os.PathLike, mode: str, lock: int) -> Iterator[Any]:
    """``path`` opened in ``mode`` under an flock (``fcntl.LOCK_SH`` / ``LOCK_EX``)."""
    import fcntl

    f = open(path, mode, encoding="utf-8", errors="replace")
    try:
        fcntl.flock(f.fileno(), lock)
        yield f
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def append_json_lines(path: str | os.PathLike, lines: list[str]) -> int:
    """Append already-serialised JSON lines to an append-only store under an exclusive lock.

    A crash may have left a torn last line without a newline: start on a fresh line so the new
    records are not glued to it (the stores' readers skip the torn fragment)."""
    import fcntl

    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(path, "a+", fcntl.LOCK_EX) as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                f.write("\n")
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return len(lines)
