"""Run one step of the device loop so that it survives a dropped SSH connection.

``python3 -m esta_runtime.device_step --dir WORK --step NAME --key KEY -- CMD ARGS...`` (run from
the bundle folder) prints the step's standard output once it has finished with exit status 0:

- when ``WORK/NAME-KEY.out`` exists (the step already finished for this key), it prints it at once;
- when the step is running (``WORK/NAME.pid`` names a live process started for this key, e.g. by a
  connection that dropped), it waits for that process instead of starting a second one;
- else it starts CMD in its own session (a dropped connection's hang-up never reaches it), its
  output going to files, and waits. On success the output becomes ``NAME-KEY.out`` (atomic rename);
  on failure the last line of its standard error goes to ours with its exit status.

A reboot kills the step; its pid is then dead and the next call starts it again. Standard
library only, so it also runs where the bundle's runtime cannot import.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped: its parent is gone) is not running any more.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no message"
    return lines[-1] if lines else "no message"


def run_step(work: Path, step: str, key: str, cmd: list[str], poll: float = 0.2) -> int:
    work.mkdir(parents=True, exist_ok=True)
    done, part = work / f"{step}-{key}.out", work / f"{step}-{key}.part"
    err, rc_file, pid_file = work / f"{step}.err", work / f"{step}-{key}.rc", work / f"{step}.pid"
    if done.is_file():
        sys.stdout.write(done.read_text())
        return 0
    info = None
    try:
        info = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        pass
    running = (isinstance(info, dict) and info.get("key") == key and info.get("boot") == _boot_id()
               and isinstance(info.get("pid"), int) and _alive(info["pid"]))
    if not running:
        rc_file.unlink(missing_ok=True)
        # The child writes its exit status itself: whoever waits for it later may not be its parent.
        wrapper = ("import subprocess, sys, os\n"
                   "rc = subprocess.call(sys.argv[3:], stdout=open(sys.argv[1], 'wb'), stderr=open(sys.argv[2], 'wb'))\n"
                   "open(os.environ['ESTA_STEP_RC'] + '.tmp', 'w').write(str(rc))\n"
                   "os.replace(os.environ['ESTA_STEP_RC'] + '.tmp', os.environ['ESTA_STEP_RC'])\n")
        env = dict(os.environ, ESTA_STEP_RC=str(rc_file))
        proc = subprocess.Popen([sys.executable, "-c", wrapper, str(part), str(err), *cmd],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        with open(work / f"{step}.starts", "a") as log:  # one line per start: what ran, and when
            log.write(json.dumps({"pid": proc.pid, "key": key, "time": time.time()}) + "\n")
        tmp = pid_file.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "key": key, "boot": _boot_id(), "started": time.time()}))
        os.replace(tmp, pid_file)
        pid = proc.pid
    else:
        proc, pid = None, info["pid"]
    while not rc_file.is_file():
        if proc is not None:
            if proc.poll() is not None and not rc_file.is_file():
                break
        elif not _alive(pid):
            time.sleep(poll)  # it may have written its status just now
            if not rc_file.is_file():
                break
        time.sleep(poll)
    try:
        rc = int(rc_file.read_text().strip())
    except (OSError, ValueError):
        print(f"step {step} stopped without an exit status (killed?): {_tail(err)}", file=sys.stderr)
        return 1
    if rc != 0:
        print(_tail(err), file=sys.stderr)
        return rc
    if not done.is_file():  # another waiter may have moved it already
        os.replace(part, done)
    sys.stdout.write(done.read_text())
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("device_step: usage: --dir WORK --step NAME --key KEY -- CMD ...", file=sys.stderr)
        return 2
    i = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--step", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args(argv[:i])
    cmd = argv[i + 1:]
    if cmd and cmd[0] == "python3":
        cmd[0] = sys.executable  # the interpreter the host asked for, not whatever python3 is
    return run_step(Path(args.dir), args.step, args.key, cmd)


if __name__ == "__main__":
    sys.exit(main())
