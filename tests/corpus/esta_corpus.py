"""Generators for the bad-input corpus (tests/test_bad_input_corpus.py, benchmarks/).

Small, readable cases are committed as files next to this module (``targets/*.toml``); everything
derived from a real supernet, bundle or archive, and everything big (the zip bomb), is generated
at test time from the functions here, so the corpus always matches the current formats.

Each ``make_*`` function writes one file (or folder) and returns its path. None of them needs
network access; all of them are deterministic.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets"

# -- a tiny, real supernet -------------------------------------------------------------------------
def tiny_supernet(path: str | os.PathLike, seed: int = 0, depth: int = 2) -> Path:
    """Two DeiT-like anchors (widths 32/48, ``depth`` blocks, 32x32 images): 6 SN-Net v1 stitches, ~0.4 MB."""
    import torch

    from esta_export.supernet import AnchorConfig, Supernet, SupernetSpec
    from esta_export.supernet.formats import save_supernet

    anchors = tuple(AnchorConfig(n, w, depth, max(1, w // 16), img_size=32, patch_size=8, num_classes=10)
                    for n, w in (("Ti", 32), ("S", 48)))
    model = Supernet(SupernetSpec(anchors, "snnet_v1"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return save_supernet(model.eval(), path)


# -- safetensors surgery ---------------------------------------------------------------------------
def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header: dict, data: bytes, out: Path) -> Path:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    out.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return out


def _retensor(src: Path, out: Path, change) -> Path:
    """Rewrite ``src`` with ``change(name, array) -> array | None`` (None drops the tensor)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(src), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    new = {}
    for k, v in tensors.items():
        v2 = change(k, v.copy())
        if v2 is not None:
            new[k] = v2
    save_file(new, str(out), metadata=meta)
    return out


def _first_weight(name: str) -> bool:
    return name.endswith("blocks.0.attn.qkv.weight") and name.startswith("anchors.0.")


def truncated(src: Path, out: Path, keep: float = 0.5) -> Path:
    raw = src.read_bytes()
    out.write_bytes(raw[:int(len(raw) * keep)])
    return out


def truncated_header(src: Path, out: Path) -> Path:
    out.write_bytes(src.read_bytes()[:40])
    return out


def corrupt_header(src: Path, out: Path) -> Path:
    """Overwrite bytes inside the JSON header: still starts with '{', no longer JSON."""
    raw = bytearray(src.read_bytes())
    for i in range(20, 60):
        raw[i] = ord("#")
    out.write_bytes(bytes(raw))
    return out


def huge_header_length(src: Path, out: Path) -> Path:
    raw = bytearray(src.read_bytes())
    raw[:8] = struct.pack("<Q", 1 << 60)
    out.write_bytes(bytes(raw))
    return out


def offsets_past_end(src: Path, out: Path) -> Path:
    header, data = _split(src)
    name = next(k for k in header if k != "__metadata__")
    a, b = header[name]["data_offsets"]
    header[name]["data_offsets"] = [a, b + 10 ** 9]
    return _join(header, data, out)


def flip_data_byte(src: Path, out: Path, position: float) -> Path:
    """Flip every bit of one byte at ``position`` (0..1) of the tensor data section."""
    header, data = _split(src)
    data = bytearray(data)
    i = min(len(data) - 1, int(position * len(data)))
    data[i] ^= 0xFF
    return _join(header, bytes(data), out)


def nonfinite(src: Path, out: Path, value: float) -> Path:
    def change(k, v):
        if _first_weight(k):
            v.flat[3] = value
        return v
    return _retensor(src, out, change)


def wrong_shape(src: Path, out: Path) -> Path:
    def change(k, v):
        return v[:-1] if _first_weight(k) else v
    return _retensor(src, out, change)


def missing_tensor(src: Path, out: Path) -> Path:
    return _retensor(src, out, lambda k, v: None if _first_weight(k) else v)


def int_tensor(src: Path, out: Path) -> Path:
    import numpy as np
    return _retensor(src, out, lambda k, v: v.astype(np.int32) if _first_weight(k) else v)


def with_spec(src: Path, out: Path, spec_text: str) -> Path:
    """Same tensors, another ``esta_export`` metadata string."""
    header, data = _split(src)
    header["__metadata__"]["esta_export"] = spec_text
    return _join(header, data, out)


def spec_json(src: Path) -> dict:
    header, _ = _split(src)
    return json.loads(header["__metadata__"]["esta_export"])


def resnet_safetensors(out: Path) -> Path:
    """A ResNet-like state dict (another architecture), no esta-export spec."""
    import numpy as np
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    t = {"conv1.weight": rng.standard_normal((8, 3, 7, 7)).astype(np.float32),
         "bn1.weight": np.ones(8, np.float32), "bn1.bias": np.zeros(8, np.float32),
         "layer1.0.conv1.weight": rng.standard_normal((8, 8, 3, 3)).astype(np.float32),
         "fc.weight": rng.standard_normal((10, 8)).astype(np.float32), "fc.bias": np.zeros(10, np.float32)}
    save_file(t, str(out))
    return out


def resnet_pth(out: Path) -> Path:
    import torch
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)},
                "epoch": 3}, out)
    return out


def anchors_without_stitches_pth(out: Path) -> Path:
    """Anchor-looking keys of a single ViT but no stitching layers (not a supernet)."""
    import torch
    torch.save({"anchors.0.cls_token": torch.zeros(1, 1, 32),
                "anchors.0.pos_embed": torch.zeros(1, 17, 32),
                "anchors.0.patch_embed.proj.weight": torch.zeros(32, 3, 8, 8),
                "anchors.0.blocks.0.mlp.fc1.weight": torch.zeros(128, 32),
                "anchors.0.head.weight": torch.zeros(10, 32)}, out)
    return out


# -- pickles that would run code -------------------------------------------------------------------
class _Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint does to run code at load time."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def pickle_os_system(out: Path, marker: Path) -> Path:
    """Legacy (non-zip) torch pickle: protocol 2, calls os.system('touch MARKER') when unpickled."""
    out.write_bytes(pickle.dumps({"model": _Reduce(os.system, (f"touch {marker}",))}, protocol=2))
    return out


def torch_zip_os_system(out: Path, marker: Path) -> Path:
    """The zip container torch.save writes, holding the same os.system payload."""
    import torch
    torch.save({"model": _Reduce(os.system, (f"touch {marker}",))}, out)
    return out


def pickle_writes_file(out: Path, marker: Path) -> Path:
    """builtins.eval of ``open(MARKER, 'w').write(...)`` plus builtins.open(MARKER, 'w') directly."""
    import builtins
    payload = {"model": _Reduce(builtins.eval, (f"open({str(marker)!r}, 'w').write('pwned')",)),
               "opt": _Reduce(builtins.open, (str(marker) + ".open", "w"))}
    out.write_bytes(pickle.dumps(payload, protocol=2))
    return out


def zip_bomb(out: Path, expanded_mb: int = 256) -> Path:
    """A torch-like zip whose data entry inflates ~1000x (``expanded_mb`` of zeros)."""
    chunk = b"\0" * (1 << 20)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"model": {}}, protocol=2))
        with zf.open("archive/data/0", "w", force_zip64=True) as f:
            for _ in range(expanded_mb):
                f.write(chunk)
        zf.writestr("archive/version", "3\n")
    return out


# -- target files ----------------------------------------------------------------------------------
def target_file(name: str) -> Path:
    """A committed bad target file from tests/corpus/targets/."""
    return TARGETS / name


def not_utf8_toml(out: Path) -> Path:
    out.write_bytes(b'name = "\xff\xfe"\n')
    return out


# -- stage summaries -------------------------------------------------------------------------------
def copy_export_with(export_dir: Path, out: Path, edit) -> Path:
    """Copy a finished export folder and rewrite its export.json with ``edit(dict) -> dict | str``."""
    shutil.copytree(export_dir, out)
    summary = json.loads((out / "export.json").read_text())
    new = edit(summary)
    (out / "export.json").write_text(new if isinstance(new, str) else json.dumps(new))
    return out


def deeply_nested_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


# -- bundles ---------------------------------------------------------------------------------------
def flip_byte(path: Path, offset: int | None = None) -> Path:
    raw = bytearray(path.read_bytes())
    i = len(raw) // 2 if offset is None else offset
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))
    return path


def edit_manifest(bundle: Path, edit) -> Path:
    m = json.loads((bundle / "manifest.json").read_text())
    new = edit(m)
    (bundle / "manifest.json").write_text(new if isinstance(new, str) else json.dumps(new))
    return bundle


# -- archives --------------------------------------------------------------------------------------
def _tar(out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    import io
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def archive_dotdot(out: Path, escape_name: str) -> Path:
    return _tar(out, [_file("bundle/manifest.json", b"{}"), _file(f"bundle/../../{escape_name}", b"escaped")])


def archive_absolute(out: Path, absolute_path: str) -> Path:
    return _tar(out, [_file("bundle/manifest.json", b"{}"), _file(absolute_path, b"escaped")])


def archive_symlink_out(out: Path, target: str) -> Path:
    # The link, then a file written "through" it: the classic two-step escape.
    return _tar(out, [_file("bundle/manifest.json", b"{}"), _link("bundle/evil", target, tarfile.SYMTYPE),
                      _file("bundle/evil/pwned.txt", b"escaped")])


def archive_hardlink_out(out: Path, target: str) -> Path:
    return _tar(out, [_file("bundle/manifest.json", b"{}"), _link("bundle/evil", target, tarfile.LNKTYPE)])


def archive_device(out: Path) -> Path:
    info = tarfile.TarInfo("bundle/null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return _tar(out, [_file("bundle/manifest.json", b"{}"), (info, None)])


def archive_garbage(out: Path) -> Path:
    out.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    return out
