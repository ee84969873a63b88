"""Subcommand registry: one file per subcommand, registered by the ``@command`` decorator and
found by listing this package (no second list to keep).

A command module must stay light at import time (argparse only): the CLI imports every command
module to build its parser, and ``esta-export targets`` must not pull in torch or a runtime.
Heavy imports belong inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    order: int = 1000      # place in `--help` (the data flow); unordered ones follow by name


REGISTRY: dict[str, Command] = {}


def command(name: str, help: str, *, order: int = 1000):  # noqa: A002 - mirrors argparse's keyword
    """Register ``cls`` (with static ``add_arguments`` and ``run``) as subcommand ``name``."""

    def wrap(cls):
        REGISTRY[name] = Command(name, help, cls.add_arguments, cls.run, order)
        return cls

    return wrap


def command_modules() -> list[str]:
    """Every module of this package (a helper such as common.py registers nothing): adding a
    command = adding a file."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def load_all() -> dict[str, Command]:
    for mod in command_modules():
        importlib.import_module(f"{__name__}.{mod}")
    return dict(sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))
