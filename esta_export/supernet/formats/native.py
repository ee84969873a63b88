"""The native format: one .safetensors file, the JSON spec in its metadata under ``esta_export``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ...errors import FormatError, InputError
from ...fsutil import atomic_path
from ..model import Supernet
from ..spec import SupernetSpec
from . import register_reader
from .checks import apply_num_heads, check_finite, load_strict

METADATA_KEY = "esta_export"


def _is_safetensors(path: Path, head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON header starting with '{'.
    return len(head) > 9 and head[8:9] == b"{"


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise FormatError(f"{path} is not a readable .safetensors file ({err})",
                          hint="the file is truncated or damaged; copy or convert it again") from None


@register_reader("native", _is_safetensors)
def read_native(path: Path, num_heads: Sequence[int] | None):
    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        # A plain state dict saved as safetensors: let the SN-Net reader infer the architecture.
        from .snnet import read_state_dict
        state = _load_tensors(path)
        return read_state_dict(state, path, num_heads, args=None)
    spec = SupernetSpec.loads(meta[METADATA_KEY])
    notes: list[str] = []
    if num_heads is not None:
        spec, note = apply_num_heads(spec, num_heads)
        notes.append(note)
    _check_size(spec, path)
    state = _load_tensors(path)
    try:
        model = Supernet(spec)
    except ValueError as err:
        raise FormatError(f"{path}: the spec describes an impossible supernet ({err})",
                          hint="the file was damaged or hand-edited; convert the checkpoint again") from None
    load_strict(model, state, path)
    check_finite(state, path)
    model.eval()
    return model, "native", notes


def _check_size(spec: SupernetSpec, path: Path) -> None:
    """A spec asking for a model much larger than the file's tensors is refused before building it
    (embed_dim = 16384 in a 1 MB file would otherwise allocate gigabytes and die)."""
    from ..spec import estimated_params

    stored = max(0, path.stat().st_size) // 2        # at least 2 bytes a parameter (fp16)
    need = estimated_params(spec.anchors)
    if need > 2 * stored + 1_000_000:
        raise FormatError(f"{path}: the spec describes about {need / 1e6:.0f}M parameters but the file holds "
                          f"at most {stored / 1e6:.1f}M", hint="the spec was edited or damaged; convert the checkpoint again")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(f"{path} is not a readable .safetensors file ({err})",
                          hint="the file is truncated or damaged; copy or convert it again") from None


def save_native(model: Supernet, path: Path, spec: SupernetSpec) -> Path:
    if path.suffix != ".safetensors":
        raise InputError(f"native supernet files end in .safetensors, got {path.name}",
                         hint="name the output file <name>.safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: spec.dumps()})
    return path
