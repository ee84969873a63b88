"""One progress display for every stage (rich), quiet when asked or when not on a terminal."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)


class StageProgress:
    def __init__(self, progress: Progress | None, task) -> None:
        self._p, self._t = progress, task

    def advance(self, note: str = "") -> None:
        if self._p is not None:
            self._p.update(self._t, advance=1, note=note)

    def note(self, note: str) -> None:
        if self._p is not None:
            self._p.update(self._t, note=note)


@contextlib.contextmanager
def stage(description: str, total: int, quiet: bool = False) -> Iterator[StageProgress]:
    if quiet or not sys.stderr.isatty():
        yield StageProgress(None, None)
        return
    cols = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*cols, console=console, transient=False) as p:
        task = p.add_task(description, total=total, note="")
        yield StageProgress(p, task)


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message, highlight=False, markup=False)
