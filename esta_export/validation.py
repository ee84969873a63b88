"""Typed field getters for every file a user or another stage hands us (light: stdlib only).

One reader per file kind uses these, so a bad field always ends the same way: one line naming the
file, the field, what was expected and what to do (an :class:`EstaError` subclass, exit status 2).
Numbers are refused when they are NaN or infinite wherever they mean something; sizes and counts
have ranges, so a hostile file cannot ask for a huge allocation.

    f = Fields("compile.json /x/compile.json", FormatError, hint="re-run 'esta-export compile'")
    d = f.obj(data, "", required={"artifacts"}, optional={"failed"})
    n = f.int(d["samples"], "samples", lo=1, hi=1 << 20)
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from .errors import EstaError, FormatError

MAX_LIST = 1 << 20


class Fields:
    """Getters that check one value each and raise ``error`` naming ``where`` and the field."""

    def __init__(self, where: str, error: type[EstaError] = FormatError,
                 hint: str = "the file is damaged or was edited; re-run the stage that writes it") -> None:
        self.where, self.error, self.hint = where, error, hint

    def fail(self, field: str, msg: str) -> EstaError:
        at = f" field '{field}'" if field else ""
        return self.error(f"{self.where}:{at} {msg}", hint=self.hint)

    # -- scalars -------------------------------------------------------------------------------
    def int(self, v: Any, field: str, lo: int = 0, hi: int = 1 << 62) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(field, f"must be an integer in [{lo}, {hi}], got {_show(v)}")
        return v

    def num(self, v: Any, field: str, lo: float = -math.inf, hi: float = math.inf, *,
            positive: bool = False) -> float:
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi \
            and not (positive and v <= 0)
        if not ok:
            rng = " > 0" if positive else "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g}]"
            raise self.fail(field, f"must be a finite number{rng}, got {_show(v)}")
        return float(v)

    def str(self, v: Any, field: str, maxlen: int = 4096, *, nonempty: bool = False) -> str:
        if not isinstance(v, str) or len(v) > maxlen or (nonempty and not v.strip()):
            raise self.fail(field, f"must be a{' non-empty' if nonempty else ''} string, got {_show(v)}")
        return v

    def enum(self, v: Any, field: str, choices: Sequence[str]) -> str:
        if not isinstance(v, str) or v not in choices:
            raise self.fail(field, f"must be one of {list(choices)}, got {_show(v)}")
        return v

    def bool(self, v: Any, field: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(field, f"must be true or false, got {_show(v)}")
        return v

    def sha256(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise self.fail(field, f"must be a sha256 (64 hex digits), got {_show(v)}")
        return v

    def optional(self, getter, v: Any, field: str, *a, **kw):
        return None if v is None else getter(v, field, *a, **kw)

    # -- containers ----------------------------------------------------------------------------
    def obj(self, v: Any, field: str, required: Iterable[str] = (), optional: Iterable[str] | None = None) -> dict:
        """A JSON object with the ``required`` keys; with ``optional`` given, no other keys."""
        if not isinstance(v, dict):
            raise self.fail(field, f"must be an object, got {_kind(v)}")
        missing = sorted(set(required) - set(v))
        if missing:
            raise self.fail(field, f"lacks {', '.join(repr(m) for m in missing[:4])}")
        if optional is not None:
            extra = sorted(set(v) - set(required) - set(optional))
            if extra:
                raise self.fail(field, f"has unknown key(s) {', '.join(repr(str(e)) for e in extra[:4])}")
        return v

    def list(self, v: Any, field: str, lo: int = 0, hi: int = MAX_LIST) -> list:
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            n = f"{lo}..{hi}" if hi < MAX_LIST else f"at least {lo}"
            raise self.fail(field, f"must be a list of {n} items, got {_kind(v)}")
        return v

    def ints(self, v: Any, field: str, lo: int = 0, hi: int = 1 << 62, *, min_len: int = 0,
             max_len: int = MAX_LIST, unique: bool = False) -> list[int]:
        items = self.list(v, field, min_len, max_len)
        out = [self.int(x, f"{field}[{i}]", lo, hi) for i, x in enumerate(items)]
        if unique and len(set(out)) != len(out):
            raise self.fail(field, "repeats an id")
        return out

    def nums(self, v: Any, field: str, lo: float = -math.inf, hi: float = math.inf, *, min_len: int = 0,
             max_len: int = MAX_LIST) -> list[float]:
        items = self.list(v, field, min_len, max_len)
        return [self.num(x, f"{field}[{i}]", lo, hi) for i, x in enumerate(items)]

    def strs(self, v: Any, field: str, *, min_len: int = 0, max_len: int = MAX_LIST, maxlen: int = 4096) -> list[str]:
        items = self.list(v, field, min_len, max_len)
        return [self.str(x, f"{field}[{i}]", maxlen) for i, x in enumerate(items)]


def _show(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return _kind(v)
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


# -- command-line numbers (argparse types) --------------------------------------------------------
def cli_int(lo: int, hi: int, flag: str = ""):
    """argparse ``type=`` for an integer option within [lo, hi] (a usage error otherwise)."""
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range; use {lo}..{hi}")
        return v
    parse.__name__ = "integer"
    return parse


def cli_float(lo: float, hi: float, *, positive: bool = False):
    """argparse ``type=`` for a finite number within [lo, hi] (NaN and infinities refused)."""
    import argparse

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or not lo <= v <= hi or (positive and v <= 0):
            rng = f"a number > 0 and at most {hi:g}" if positive else f"a number in [{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"{text} is not usable; give {rng}")
        return v
    parse.__name__ = "number"
    return parse
