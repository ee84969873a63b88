"""Remote profiling against a real OpenSSH server started on loopback by the test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from esta_export.bundle.remote import parse_remote, remote_profile
from fixtures.family import make_family
from fixtures.loopback import free_port
from esta_export.bundle.writer import write_bundle
from esta_export.errors import InputError, RemoteError


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """The loopback OpenSSH server (tests/fixtures/loopback.py); skips where none can start."""
    from fixtures.loopback import Unavailable, loopback_sshd

    try:
        with loopback_sshd(tmp_path_factory.mktemp("sshd")) as info:
            yield info
    except Unavailable as why:
        pytest.skip(str(why))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    job = make_family(tmp_path_factory.mktemp("job"))
    return write_bundle(job, "cpu", job / "bundle" / "cpu")


def test_parse_remote():
    assert parse_remote("root@10.0.0.5:2222") == ("root", "10.0.0.5", 2222)
    assert parse_remote("jetson") == (None, "jetson", None)
    with pytest.raises(InputError):
        parse_remote("root@host:ssh")


@pytest.mark.slow
def test_remote_profile_over_loopback_ssh(sshd, bundle, tmp_path):
    store = tmp_path / "profiles" / "cpu.jsonl"
    remote_dir = str(tmp_path / "device" / "bundle")  # the "device" is this machine
    recs = remote_profile(bundle, "127.0.0.1", user=sshd["user"], port=sshd["port"],
                          identity=sshd["identity"], known_hosts=sshd["known_hosts"], remote_dir=remote_dir,
                          python=sys.executable, store_path=store, runs=5, seconds=0.05)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(r["stitch_id"] for r in recs) == sorted(s["id"] for s in manifest["stitches"])
    by_id = {s["id"]: s for s in manifest["stitches"]}
    for r in recs:
        assert r["artifact_sha256"] == by_id[r["stitch_id"]]["artifact"]["compiled_sha256"]
        lat = r["latency_ms"]
        assert lat["n"] >= 5 and 0 < lat["min"] <= lat["median"] <= lat["p99"]
        assert r["env"]["runtimes"]["onnxruntime"] and r["env_hash"]
        assert r["remote"]["bundle_copied"] is True
    # the device really received the bundle, and the records reached the store
    assert (Path(remote_dir) / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
    stored = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    assert len(stored) == len(recs)
    # second run: the device already holds this bundle, nothing is copied again
    again = remote_profile(bundle, "127.0.0.1", user=sshd["user"], port=sshd["port"],
                           identity=sshd["identity"], known_hosts=sshd["known_hosts"],
                           strict_host_keys=True, remote_dir=remote_dir, python=sys.executable,
                           store_path=store, runs=3, seconds=0.01, stitch_ids=[recs[0]["stitch_id"]])
    assert len(again) == 1 and again[0]["remote"]["bundle_copied"] is False


def test_remote_profiler_failure_is_one_line(sshd, bundle, tmp_path):
    with pytest.raises(RemoteError, match="profiler failed"):
        remote_profile(bundle, "127.0.0.1", user=sshd["user"], port=sshd["port"],
                       identity=sshd["identity"], known_hosts=sshd["known_hosts"],
                       remote_dir=str(tmp_path / "d"), python="/nonexistent/python3", runs=2, seconds=0.01)


def test_unreachable_host_is_remote_error(sshd, bundle, tmp_path):
    with pytest.raises(RemoteError, match="cannot reach"):
        remote_profile(bundle, "127.0.0.1", user=sshd["user"], port=free_port(),
                       identity=sshd["identity"], known_hosts=sshd["known_hosts"],
                       remote_dir=str(tmp_path / "d"), connect_timeout=5)
