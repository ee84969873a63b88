"""Subcommand registry: one file per subcommand, registered by the ``@command`` decorator.

A command module must stay light at import time (argparse only): the CLI imports every command
module to build its parser, and ``esta-export targets`` must not pull in torch or a runtime.
Heavy imports belong inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable

# Modules that define commands, in the order `--help` lists them. Adding a command = adding a
# file here and one name to this tuple.
COMMAND_MODULES = (
    "run", "inspect", "convert", "stitch", "export", "train", "targets", "compile", "profile", "select",
    "report", "bundle",
)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


REGISTRY: dict[str, Command] = {}


def command(name: str, help: str):  # noqa: A002 - mirrors argparse's keyword
    """Register ``cls`` (with static ``add_arguments`` and ``run``) as subcommand ``name``."""

    def wrap(cls):
        REGISTRY[name] = Command(name, help, cls.add_arguments, cls.run)
        return cls

    return wrap


def load_all() -> dict[str, Command]:
    for mod in COMMAND_MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as err:  # a command file not written yet must not break the rest
            if err.name != f"{__name__}.{mod}":
                raise
    order = {name: i for i, name in enumerate(COMMAND_MODULES)}
    return dict(sorted(REGISTRY.items(), key=lambda kv: order.get(kv[0], len(order))))
