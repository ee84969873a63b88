"""Remote profiling against a real OpenSSH server started on loopback by the test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esta_export.bundle.remote import parse_remote, remote_profile
from fixtures.family import make_family
from esta_export.bundle.writer import write_bundle
from esta_export.errors import InputError, RemoteError


def _sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    exe = _sshd()
    if exe is None:
        pytest.skip("no OpenSSH server (sshd) installed: apt-get install openssh-server")
    if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("ssh / ssh-keygen not installed: apt-get install openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    import getpass

    user = getpass.getuser()
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {d / 'host_key'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", f"PidFile {d / 'sshd.pid'}",
        "UsePAM no", "StrictModes no", "PermitRootLogin yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        ""]))
    # sshd refuses to start without its privilege-separation folder.
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([exe, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")
            pytest.skip(f"sshd could not start: {out.strip().splitlines()[-1] if out.strip() else proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not listen within 15 s")
    yield {"port": port, "user": user, "identity": d / "user_key", "known_hosts": d / "known_hosts"}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


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
        remote_profile(bundle, "127.0.0.1", user=sshd["user"], port=_free_port(),
                       identity=sshd["identity"], known_hosts=sshd["known_hosts"],
                       remote_dir=str(tmp_path / "d"), connect_timeout=5)
