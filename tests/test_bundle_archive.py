"""Bundle archives: round trip, and extraction that refuses anything leaving the bundle."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from esta_export.bundle.archive import extract_archive, write_archive
from fixtures.family import make_family
from esta_export.bundle.writer import write_bundle
from esta_export.errors import BundleError, UnsafeFileError
from esta_export.runtime import Bundle


def test_archive_round_trip_opens_and_verifies(tmp_path):
    job = make_family(tmp_path / "job")
    arc = write_bundle(job, "cpu", tmp_path / "dist" / "cpu", archive=True)
    assert arc.name == "cpu.tar.gz" and not (tmp_path / "dist" / "cpu").exists()
    with tarfile.open(arc) as tar:
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
        assert all(m.uid == 0 and m.name.startswith("cpu") for m in tar.getmembers())
    root = extract_archive(arc, tmp_path / "device")
    assert root == tmp_path / "device" / "cpu"
    b = Bundle.open(root, verify=True)
    assert len(b.stitches()) == 4
    with pytest.raises(BundleError, match="already exists"):
        extract_archive(arc, tmp_path / "device")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("members, message", [
    ([_file("b/manifest.json"), _file("b/../../evil.py")], "contains '..'"),
    ([_file("/etc/evil")], "absolute path"),
    ([_file("b/manifest.json"), _link("b/models/w.bin", "../../../etc/passwd")], "symlink"),
    ([_file("b/manifest.json"), _link("b/abs", "/etc/passwd")], "symlink"),
    ([_file("b/manifest.json"), _link("b/hard", "../outside", tarfile.LNKTYPE)], "hard link"),
])
def test_unsafe_members_refused_before_writing(tmp_path, members, message):
    arc = _tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(UnsafeFileError, match=message) as err:
        extract_archive(arc, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil.py").exists() and not (tmp_path / "evil.py").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_device_node_refused(tmp_path):
    dev = tarfile.TarInfo("b/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    arc = _tar(tmp_path / "dev.tar.gz", [_file("b/manifest.json"), (dev, None)])
    with pytest.raises(UnsafeFileError, match="device"):
        extract_archive(arc, tmp_path / "out")


def test_link_inside_the_bundle_is_allowed(tmp_path):
    arc = _tar(tmp_path / "ok.tar.gz", [_file("b/models/real.bin", b"abc"), _link("b/alias.bin", "models/real.bin")])
    root = extract_archive(arc, tmp_path / "out")
    assert (root / "b" / "alias.bin").read_bytes() == b"abc"


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BundleError, match="not a readable tar"):
        extract_archive(tmp_path / "x.tar.gz", tmp_path / "out")


def test_write_archive_skips_links(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    (d / "f").write_text("x")
    (d / "link").symlink_to("/etc/passwd")
    out = write_archive(d, tmp_path / "b.tar.gz")
    with tarfile.open(out) as tar:
        assert sorted(m.name for m in tar.getmembers()) == ["b", "b/f"]
