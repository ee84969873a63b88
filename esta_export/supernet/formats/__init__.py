"""Supernet file formats: one reader per format, auto-detected by ``load_supernet``.

Readers: ``native`` (esta-export .safetensors with a JSON spec) and ``snnet`` (SN-Net v1 and
SN-Netv2 training checkpoints, ``torch.load(weights_only=True)`` allowing only argparse.Namespace;
also raw state dicts, in .pth or in a .safetensors without an esta-export spec). Nothing is ever
executed from a file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ...errors import InputError
from ...fsutil import sha256_file
from ..model import Supernet
from ..spec import SupernetSpec


@dataclass
class LoadedSupernet:
    model: Supernet
    spec: SupernetSpec
    source_format: str          # native | snnet_v1 | snnet_v2
    path: Path
    sha256: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_heads(self) -> list[int]:
        return [a.num_heads for a in self.spec.anchors]


Reader = Callable[[Path, "Sequence[int] | None"], tuple[Supernet, str, list[str]]]
READERS: list[tuple[str, Callable[[Path, bytes], bool], Reader]] = []


def _load_readers() -> None:
    """Import every module of this package: a reader registers itself (no list to keep); the
    native reader first, so its sniff wins for an esta-export .safetensors."""
    names = sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: (n != "native", n))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")


def register_reader(name: str, sniff: Callable[[Path, bytes], bool]):
    def wrap(fn: Reader) -> Reader:
        READERS.append((name, sniff, fn))
        return fn
    return wrap


def load_supernet(path: str | os.PathLike, num_heads: Sequence[int] | None = None) -> LoadedSupernet:
    """Read any supported supernet file. ``num_heads`` overrides the head counts per anchor."""
    _load_readers()

    path = Path(path)
    if not path.exists():
        raise InputError(f"supernet file not found: {path}", hint="check the path")
    if not path.is_file():
        raise InputError(f"supernet path {path} is not a file", hint="give the .safetensors or .pth file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise InputError(f"cannot read supernet file {path} ({err.strerror})",
                         hint="check its permissions") from None
    if not head:
        raise InputError(f"supernet file {path} is empty", hint="copy or download it again")
    for name, sniff, read in READERS:
        if sniff(path, head):
            model, fmt, notes = read(path, num_heads)
            return LoadedSupernet(model, model.spec, fmt, path, sha256_file(path), notes)
    raise InputError(f"{path} is neither an esta-export .safetensors supernet nor an SN-Net/SN-Netv2 "
                     f"PyTorch checkpoint", hint="convert it with the training code's own save format "
                                                 "or 'esta-export convert'")


def save_supernet(model: Supernet, path: str | os.PathLike, spec: SupernetSpec | None = None) -> Path:
    from .native import save_native
    return save_native(model, Path(path), spec or model.spec)


__all__ = ["LoadedSupernet", "load_supernet", "save_supernet", "register_reader"]
