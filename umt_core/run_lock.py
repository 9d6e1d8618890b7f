"""One writer per run directory.

Training holds an exclusive advisory lock (``fcntl.flock``) on ``<run>/writer.lock``
while it runs. The kernel drops the lock when the process ends, however it ends
(``kill -9`` included), so a crashed run never blocks the next one and there is no
stale lock to clean up. The file also records who holds it (pid, host, start time,
command), for the message a second writer gets.

flock locks belong to an open file, so a second opening in the same process (a
notebook that starts another training in a thread) is refused as well. Processes
forked while the lock is held share it; the message says so when the recorded
holder has exited but the lock is still held.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import Failure, UsageError

LOCK_NAME = "writer.lock"


class RunBusyError(Failure):
    """Another process writes this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir): ...`` holds the run directory's writer lock (creating
    the folder); `acquire` raises `RunBusyError` naming the holder."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UsageError(f"{self.run_dir}: exists and is not a folder; give a run "
                             "directory (e.g. runs/<name>)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunBusyError(_busy_message(self.run_dir, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:  # noqa: PYI034
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _busy_message(run_dir: Path, holder: dict) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    if pid is None:
        who = "another process (it has not recorded its pid yet)"
    else:
        who = f"pid {pid} on host {host}"
        if holder.get("started"):
            who += f", since {holder['started']}"
        if holder.get("command"):
            who += f" ({holder['command']})"
        if host == socket.gethostname() and not _alive(int(pid)):
            who += "; that process has exited, but a process it started still holds the lock"
    return (f"{run_dir} is being written by {who}. Wait for it to finish or stop it, or "
            f"train into another run directory; two writers would mix their checkpoints "
            f"and metrics")
