"""The one syntax for stitch ids on the command line: ``all`` or ``0,3,10-20`` (light: no torch)."""

from __future__ import annotations

from .errors import StitchError


def parse_id_list(text: str | None) -> list[int] | None:
    """``None``/``all`` -> None (every stitch); ``0,3,10-20`` -> sorted unique ids."""
    if text is None or text.strip().lower() == "all":
        return None
    chosen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if hi < lo:
                    raise ValueError
                chosen.update(range(lo, hi + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise StitchError(f"--stitches must look like 'all' or '0,3,10-20', got {text!r}") from None
    if not chosen:
        raise StitchError(f"--stitches {text!r} selects no stitch", hint="use 'all' or ids such as 0,3,10-20")
    return sorted(chosen)
