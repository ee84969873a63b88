"""Backend registry: one file per runtime, registered by the ``@register`` decorator.

``get_backend("onnxruntime")`` imports only that backend's module; a backend module imports its
runtime lazily (inside methods), so listing backends stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, TypeVar

from ..errors import TargetError
from ..runtime.backends import BACKENDS as BACKEND_TABLE
from .base import Backend, CompiledArtifact, Runner

__all__ = ["Backend", "CompiledArtifact", "Runner", "get_backend", "register", "backend_modules",
           "runtime_importable"]

_REGISTRY: dict[str, type[Backend]] = {}

# Backend name -> (module defining it, runtime package it needs), from the one table of backends
# (runtime/backends.py). Adding a backend = its file here plus one entry there.
_MODULES: dict[str, tuple[str, str]] = {name: (spec.module, spec.package)
                                        for name, spec in BACKEND_TABLE.items()}

B = TypeVar("B", bound=type[Backend])


def register(name: str) -> Callable[[B], B]:
    def wrap(cls: B) -> B:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def backend_modules() -> dict[str, str]:
    """Backend name -> runtime package, without importing anything."""
    return {name: pkg for name, (_, pkg) in _MODULES.items()}


def runtime_importable(backend: str) -> bool:
    """Whether the backend's runtime package is installed, found without importing it."""
    spec = BACKEND_TABLE.get(backend)
    return spec is not None and spec.installed()


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise TargetError(f"unknown backend {name!r}", hint=f"use one of: {', '.join(_MODULES)}")
        importlib.import_module(f"{__name__}.{_MODULES[name][0]}")
    return _REGISTRY[name]()
