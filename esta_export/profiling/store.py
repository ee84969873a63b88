"""Append-only JSON-lines profile store, safe for concurrent writers and crash-tolerant readers.

Why JSON lines plus ``fcntl.flock``: records are only ever added, so appending one line per record
under an exclusive lock keeps two profiling processes (say, two targets measured at once) from
interleaving bytes, and a crash can at worst tear the last line. Readers take a shared lock, skip
a torn or corrupt line with a warning instead of losing the whole store, and refuse a record from
a newer major schema version. The cache key is (artifact sha256, environment hash, settings hash):
the same compiled artifact measured on the same machine with the same protocol is never measured
twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ProfileError
from ..fsutil import append_json_lines, locked_file

SCHEMA = "esta-export/profile"
SCHEMA_VERSION = "1.0"
_MAJOR = int(SCHEMA_VERSION.split(".")[0])


class ProfileStoreWarning(UserWarning):
    """A line of the store could not be read and was skipped."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_record(rec: Any, where: str) -> dict[str, Any]:
    """A record must be ours and not from a newer major version."""
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        raise ProfileError(f"{where} is not an esta-export profile record",
                           hint="point --store at a file written by 'esta-export profile'")
    version = str(rec.get("schema_version", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise ProfileError(f"{where} has an unreadable schema_version {version!r}",
                           hint="re-profile into a fresh --store") from None
    if major > _MAJOR:
        raise ProfileError(
            f"{where} uses profile schema {version}, newer than this esta-export reads "
            f"({SCHEMA_VERSION})", hint="upgrade esta-export or profile into a fresh --store")
    return rec


class ProfileStore:
    """``profiles/<target>.jsonl``: one JSON record per line, appended under a file lock."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []

    @contextlib.contextmanager
    def _locked(self, mode: str, lock: int) -> Iterator[Any]:
        with locked_file(self.path, mode, lock) as f:
            yield f

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append records (each checked); returns how many were written."""
        lines = []
        for rec in records:
            rec = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **rec}
            rec.setdefault("time", now_iso())
            check_record(rec, "record to append")
            lines.append(json.dumps(rec, sort_keys=False, default=_json_default))
        return append_json_lines(self.path, lines)

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, oldest first; unreadable lines are skipped with a warning."""
        if not self.path.exists():
            return []
        if self.path.is_dir():
            raise ProfileError(f"profile store {self.path} is a folder",
                               hint="pass a .jsonl file path to --store")
        with self._locked("r", fcntl.LOCK_SH) as f:
            text = f.read()
        out = []
        lines = text.split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn = n == len(lines) or (n == len(lines) - 1 and not lines[-1])
                msg = (f"{self.path}:{n}: skipped a {'torn last' if torn else 'corrupt'} line "
                       f"(an interrupted write); its stitch will be measured again")
                self.warnings.append(msg)
                warnings.warn(msg, ProfileStoreWarning, stacklevel=2)
                continue
            out.append(check_record(rec, f"{self.path}:{n}"))
        return out

    def lookup(self, artifact_sha256: str, env_hash: str,
               settings_hash: str | None = None) -> dict[str, Any] | None:
        """The newest record for this artifact measured in this environment with these settings."""
        hit = None
        for rec in self.records():
            if (rec.get("artifact_sha256") == artifact_sha256 and rec.get("env_hash") == env_hash
                    and (settings_hash is None or rec.get("settings_hash") == settings_hash)
                    and rec.get("measured", True)):
                hit = rec
        return hit


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
