"""Import timm's model classes where torchvision cannot be imported (tests only).

timm (a dev/test dependency: the reference our anchors are checked against) imports torchvision at
import time for its data transforms and FrozenBatchNorm2d, which ViT/DeiT never use. PyPI's
torchvision wheels are built against the CUDA torch and fail to load beside the CPU build of torch
this project installs ("operator torchvision::nms does not exist"), and no CPU torchvision wheel is
reachable from PyPI. So, only when ``import torchvision`` fails, this module puts a placeholder
``torchvision`` package on the import path whose every attribute is an inert class that raises if
used. The ViT/DeiT code under test never touches it; anything that did would fail loudly.

``timm_vit()`` returns timm's ``vision_transformer`` module, or skips the test when timm is absent.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Meta(type):
    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _Meta(f"{cls.__name__}.{attr}", (_Placeholder,), {})
        setattr(cls, attr, value)
        return value


class _Placeholder(metaclass=_Meta):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not usable here (tests/timm_shim.py placeholder)")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []

        def getattr_(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            value = _Meta(attr, (_Placeholder,), {})
            setattr(mod, attr, value)
            return value

        mod.__getattr__ = getattr_
        return mod

    def exec_module(self, module):
        pass


def _install() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:                     # ImportError, or RuntimeError from a mismatched wheel
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())


def timm_vit():
    import pytest
    _install()
    try:
        import timm.models.vision_transformer as vit
    except ImportError as err:
        pytest.skip(f"timm is not installed ({err}); pip install --no-deps timm")
    return vit


_install()
