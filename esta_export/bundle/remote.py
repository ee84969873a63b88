"""Profile a bundle on a remote device over SSH with the device's own runtime.

Uses the system ``ssh`` binary (BatchMode: never prompts; host keys accepted on first use or
checked against a given known_hosts file), so whatever works with ``ssh -i KEY -p PORT user@host``
works here, including ssh-agent and ~/.ssh/config. The bundle travels as one tar stream over the
same kind of connection (skipped when the device already holds this exact bundle); the bundle's
``profile_device.py`` prints one JSON record per line, which come back into the profile store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import InputError, RemoteError
from .manifest import MANIFEST, load_manifest


def parse_remote(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` -> (user, host, port)."""
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, None
    if hostport.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        host, _, p = hostport.partition(":")
        if not p.isdigit():
            raise InputError(f"--remote {spec!r}: port {p!r} is not a number", hint="use user@host[:port]")
        port = int(p)
    if not host:
        raise InputError(f"--remote {spec!r} names no host", hint="use user@host[:port]")
    return (user or None), host, port


def _ssh_base(host: str, user: str | None, port: int, identity, known_hosts, connect_timeout: int,
              strict_host_keys: bool = False) -> list[str]:
    if shutil.which("ssh") is None:
        raise RemoteError("the ssh client is not installed here", hint="install openssh-client")
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
           "-o", "ServerAliveInterval=15", "-p", str(port)]
    # Trust on first use unless asked to be strict; a changed host key is refused either way.
    cmd += ["-o", f"StrictHostKeyChecking={'yes' if strict_host_keys else 'accept-new'}"]
    if known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if identity:
        if not Path(identity).is_file():
            raise InputError(f"SSH key {identity} not found", hint="pass an existing private key to --identity")
        cmd += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    return cmd + [f"{user}@{host}" if user else host]


def _run(base: list[str], remote_cmd: str, what: str, *, stdin=None, timeout: float) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(base + [remote_cmd], input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{what} on {base[-1]} did not finish within {timeout:.0f} s",
                          hint="raise the timeout or check the device") from None
    if proc.returncode == 255:
        raise RemoteError(f"cannot reach {base[-1]} over SSH: {_last_line(proc.stderr)}",
                          hint=f"check host, port, key and that 'ssh {' '.join(base[1:])} true' works")
    return proc


def _last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no message"


def _copy_bundle(bundle_dir: Path, base: list[str], remote_dir: str, timeout: float) -> bool:
    """Copy the bundle unless the device already holds the same manifest; True when copied."""
    local_manifest = (bundle_dir / MANIFEST).read_bytes()
    q = shlex.quote(remote_dir)
    have = _run(base, f"cat {q}/{MANIFEST} 2>/dev/null || true", "reading the remote manifest", timeout=timeout)
    if have.stdout == local_manifest:
        return False
    cmd = (f"rm -rf {q}.part && mkdir -p {q}.part && tar -xzf - -C {q}.part && "
           f"rm -rf {q} && mv {q}.part {q}")
    # Stream the tar straight into ssh: bundles are tens to hundreds of MB. stderr goes to a file
    # so a chatty remote cannot fill a pipe while we are still writing.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(base + [cmd], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|gz") as tar:
                for path in sorted(bundle_dir.rglob("*")):
                    if path.is_file() and "__pycache__" not in path.parts:
                        tar.add(str(path), arcname=path.relative_to(bundle_dir).as_posix(), recursive=False)
        except BrokenPipeError:
            pass  # the remote side ended early; its exit status and stderr say why
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.close()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RemoteError(f"copying the bundle to {base[-1]} did not finish within {timeout:.0f} s",
                              hint="raise the timeout or check the link") from None
        err.seek(0)
        stderr = err.read()
    if code == 255:
        raise RemoteError(f"cannot reach {base[-1]} over SSH: {_last_line(stderr)}",
                          hint="check host, port and key")
    if code != 0:
        raise RemoteError(f"copying the bundle to {base[-1]}:{remote_dir} failed: {_last_line(stderr)}",
                          hint="check free space and that tar exists on the device")
    return True


def remote_profile(bundle_dir: str | Path, host: str, *, user: str | None = None, port: int = 22,
                   identity: str | Path | None = None, known_hosts: str | Path | None = None,
                   strict_host_keys: bool = False,
                   remote_dir: str | None = None, python: str = "python3",
                   store_path: str | Path | None = None, runs: int = 50, seconds: float = 2.0,
                   batch: int = 1, threads: int | None = None, stitch_ids=None,
                   timeout: float = 1800.0, connect_timeout: int = 10) -> list[dict]:
    """Copy ``bundle_dir`` to ``user@host:port``, profile every stitch there, return the records.

    Records are appended to ``store_path`` (the profile store, JSON lines) when given. ``python``
    is the interpreter on the device (it needs numpy and the bundle's runtime, not esta-export).
    Host keys: ``known_hosts`` (default ~/.ssh/known_hosts) is trusted on first use, or must
    already hold the device's key with ``strict_host_keys``.
    """
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    short = hashlib.sha256((bundle_dir / MANIFEST).read_bytes()).hexdigest()[:12]
    remote_dir = remote_dir or f"esta-export-bundles/{manifest['target']['name']}-{short}"
    base = _ssh_base(host, user, port, identity, known_hosts, connect_timeout, strict_host_keys)
    copied = _copy_bundle(bundle_dir, base, remote_dir, timeout)
    args = ["--runs", str(runs), "--seconds", str(seconds), "--batch", str(batch)]
    if threads:
        args += ["--threads", str(threads)]
    if stitch_ids:
        args += ["--stitches", ",".join(str(int(i)) for i in stitch_ids)]
    cmd = f"cd {shlex.quote(remote_dir)} && {shlex.quote(python)} profile_device.py {shlex.join(args)}"
    proc = _run(base, cmd, "profiling", timeout=timeout)
    if proc.returncode != 0:
        raise RemoteError(f"the profiler failed on {base[-1]} (exit {proc.returncode}): {_last_line(proc.stderr)}",
                          hint=(f"for a TensorRT bundle build and validate the engines there first "
                                f"('cd {remote_dir} && {python} build_engines.py kit.json'; needs TensorRT "
                                f"and cuda-python)" if _is_tensorrt(bundle_dir) else
                                f"the device needs {python} with numpy and onnxruntime; try "
                                f"'cd {remote_dir} && {python} app.py' there"))
    records = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            rec["remote"] = {"host": host, "user": user, "port": port, "remote_dir": remote_dir,
                             "bundle_copied": copied}
            records.append(_with_env_hash(rec))
    if not records:
        raise RemoteError(f"the profiler on {base[-1]} printed no records: {_last_line(proc.stderr)}",
                          hint="run profile_device.py on the device by hand to see why")
    if store_path is not None:
        _store(store_path, records)
    return records


def _is_tensorrt(bundle_dir) -> bool:
    try:
        manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
        return (manifest.get("target") or {}).get("backend") == "tensorrt"
    except (OSError, ValueError, AttributeError):
        return False


def _with_env_hash(rec: dict) -> dict:
    try:
        from ..profiling.environment import env_hash
    except ImportError:  # profiling not installed: a plain content hash of the env
        rec.setdefault("env_hash", hashlib.sha256(json.dumps(rec.get("env"), sort_keys=True).encode()).hexdigest()[:16])
        return rec
    rec.setdefault("env_hash", env_hash(rec.get("env") or {}))
    return rec


def _store(path: str | Path, records: list[dict]) -> None:
    try:
        from ..profiling.store import ProfileStore
    except ImportError:
        ProfileStore = None  # noqa: N806
    if ProfileStore is not None:
        ProfileStore(path).append(records)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


# -- the device loop's connection (esta-export SUPERNET --target T --device USER@HOST[:PORT]) ---------

_HASH_TREE = r"""
import hashlib, json, os, sys
root, out = sys.argv[1], {}
for dp, dn, fn in os.walk(root):
    dn[:] = [d for d in dn if not d.startswith(".")]
    for f in fn:
        p = os.path.join(dp, f)
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
        out[os.path.relpath(p, root).replace(os.sep, "/")] = h.hexdigest()
print(json.dumps(out))
"""


class Device:
    """One device reached with the system ``ssh``; every failure names the device and the step.

    Connections are multiplexed (one TCP + SSH handshake for the whole loop, OpenSSH's
    ControlMaster) when the client supports it; :meth:`close` ends the master.
    """

    def __init__(self, address: str, *, identity=None, known_hosts=None, python: str = "python3",
                 strict_host_keys: bool = False, connect_timeout: int = 10, multiplex: bool = True) -> None:
        self.address = address
        self.user, self.host, port = parse_remote(address)
        self.port = port or 22
        self.python = python
        self._base = _ssh_base(self.host, self.user, self.port, identity, known_hosts, connect_timeout,
                               strict_host_keys)
        self._control_dir = None
        if multiplex:
            self._control_dir = tempfile.mkdtemp(prefix="esta-ssh-")  # short: socket paths are capped
            self._base[1:1] = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_dir}/%C",
                               "-o", "ControlPersist=120"]

    # -- plumbing -------------------------------------------------------------------------------
    def fail(self, step: str, what: str, fix: str) -> RemoteError:
        return RemoteError(f"device {self.address}, step {step}: {what}", hint=f"fix: {fix}")

    def run(self, cmd: str, step: str, *, stdin=None, timeout: float = 3600.0,
            fix: str = "check the device") -> bytes:
        """Run ``cmd`` (a shell command line) on the device; its standard output, or RemoteError.

        ``stdin``: an open binary file streamed to the command (None: nothing)."""
        try:
            proc = subprocess.run(self._base + [cmd], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(step, f"did not finish within {timeout:.0f} s",
                            "re-run the same command to resume, or check the device") from None
        if proc.returncode == 255:
            raise self.fail(step, f"connection lost or refused ({_last_line(proc.stderr)})",
                            f"check host, port and key ('ssh -p {self.port} {self._base[-1]} true' must work), "
                            "then re-run the same command: finished steps are kept")
        if proc.returncode != 0:
            msg = _last_line(proc.stderr)
            if proc.returncode == 127 or "No such file or directory" in msg and self.python in msg:
                raise self.fail(step, f"{self.python} not found on the device ({msg})",
                                "install Python 3 there or pass --device-python PATH")
            raise self.fail(step, f"exit {proc.returncode}: {msg}", fix)
        return proc.stdout

    def read(self, path: str, step: str) -> bytes | None:
        """The bytes of a file on the device, or None when it does not exist."""
        q = shlex.quote(path)
        out = self.run(f"if [ -f {q} ]; then echo y; cat {q}; else echo n; fi", step)
        return out[2:] if out[:2] == b"y\n" else None

    def hashes(self, remote_dir: str, step: str = "sync") -> dict[str, str]:
        """sha256 of every file under ``remote_dir`` on the device ({} when it does not exist)."""
        q = shlex.quote(remote_dir)
        out = self.run(f"mkdir -p {q} && {shlex.quote(self.python)} -c {shlex.quote(_HASH_TREE)} {q}", step,
                       fix=f"the device needs a writable {remote_dir} and a working {self.python}")
        try:
            return json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise self.fail(step, "could not list the files it holds",
                            f"check that {self.python} runs there") from None

    def push(self, local_dir: Path, remote_dir: str, files: list[str], step: str = "sync",
             timeout: float = 3600.0) -> None:
        """Copy ``files`` (relative to ``local_dir``) into ``remote_dir`` as one tar stream."""
        if not files:
            return
        q = shlex.quote(remote_dir)
        with tempfile.TemporaryFile() as buf:
            with tarfile.open(fileobj=buf, mode="w|gz") as tar:
                for rel in files:
                    tar.add(str(local_dir / rel), arcname=rel, recursive=False)
            buf.seek(0)
            self.run(f"mkdir -p {q} && tar -xzf - -C {q}", step, stdin=buf, timeout=timeout,
                     fix="check free space on the device and that tar exists there")

    def pull(self, remote_dir: str, names: list[str], local_dir: Path, step: str) -> list[str]:
        """Copy ``names`` (files or folders under ``remote_dir``, the missing ones skipped) here."""
        q = shlex.quote(remote_dir)
        quoted = " ".join(shlex.quote(n) for n in names)
        data = self.run(f"cd {q} && for f in {quoted}; do [ -e \"$f\" ] && echo \"$f\"; done | "
                        f"tar -czf - -T - 2>/dev/null || true", step)
        local_dir.mkdir(parents=True, exist_ok=True)
        got = []
        if not data:
            return got
        import io

        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                # only plain files and folders, inside local_dir: a hostile device writes nowhere else
                dest = (local_dir / m.name).resolve()
                if not (m.isfile() or m.isdir()) or not str(dest).startswith(str(local_dir.resolve()) + "/"):
                    continue
                if m.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                tmp = dest.with_name(f".{dest.name}.part")
                with open(tmp, "wb") as f:
                    shutil.copyfileobj(src, f)
                os.replace(tmp, dest)
                got.append(m.name)
        return got

    def close(self) -> None:
        if self._control_dir is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(self._base[:-1] + ["-O", "exit", self._base[-1]], capture_output=True, timeout=10)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
