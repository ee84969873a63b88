"""Bundle manifest: schema checks shared by the writer and the device runtime."""

from __future__ import annotations

import json

import pytest

from esta_export.bundle.manifest import SCHEMA, SCHEMA_VERSION, check_manifest, file_table, input_spec, load_manifest
from esta_export.runtime import BundleError, ManifestVersionError


def _m(**over):
    # The smallest manifest the runtime accepts: one stitch, an input size (issue 16: an empty
    # stitch list or a missing image_size is refused).
    m = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "files": [], "input": {"image_size": 8},
         "stitches": [{"id": 0, "artifact": {"path": "models/stitch_000.onnx", "sha256": "0" * 64}}]}
    m.update(over)
    return m


def test_newer_major_version_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(_m(schema_version="2.0")))
    with pytest.raises(ManifestVersionError, match="schema_version 2.0, newer") as err:
        load_manifest(tmp_path)
    assert "update the runtime" in str(err.value) and "\n" not in str(err.value)


def test_newer_minor_version_read():
    assert check_manifest(_m(schema_version="1.7", extra_field=1))["extra_field"] == 1


@pytest.mark.parametrize("bad, match", [
    ({"schema": "something/else"}, "not an esta-export bundle manifest"),
    ({"schema_version": "one"}, "not MAJOR.MINOR"),
    ({"files": None}, None),
])
def test_malformed_manifests(bad, match):
    m = _m(**bad)
    if bad.get("files", 0) is None:
        del m["files"]
        match = "lacks 'files'"
    with pytest.raises(BundleError, match=match):
        check_manifest(m)


def test_missing_and_corrupt_manifest(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_file_table_skips_manifest_and_caches(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"12345")
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.pyc").write_bytes(b"")
    table = file_table(tmp_path)
    assert [(f["path"], f["size"]) for f in table] == [("a/x.bin", 5)]


def test_input_spec_defaults():
    spec = input_spec({"shape": ["batch", 3, 64, 64]})
    assert spec["image_size"] == 64 and spec["layout"] == "NCHW" and spec["resize"] == "bilinear"
    assert spec["name"] == "pixels" and spec["std"] == [1.0, 1.0, 1.0]
