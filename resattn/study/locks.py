"""Per-run locks, so that runners started at once on the same study never train a run twice.

The lock is a kernel advisory lock (``flock``) on ``runs/<study>/<run id>/lock``, held by the
process that trains the run. The kernel drops it the moment that process ends, however it ends
(SIGKILL and power loss included), so a lock can never go stale on a local disk: a lock file
without a live holder is free, whatever it says. On NFS the lock is a POSIX lock that the server
releases when the client's lease expires. The file names the holder (host, pid, start time), for
the message the other runners print.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path


class RunLock:
    """Non-blocking exclusive lock on a run directory; ``acquire`` is True if this process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise OSError(
                err.errno,
                f"cannot lock {self.path} ({err.strerror}); the runs folder must be on a file system "
                "with file locks (local disk, NFS with locking)",
            ) from err
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def holder(self) -> str:
        """Who holds the lock, as recorded in the file (best effort: it is only read for messages)."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"


def is_locked(run_dir: Path) -> bool:
    """Whether some live process holds the run's lock right now (probe: take and drop it)."""
    lock = RunLock(run_dir)
    if not lock.path.exists():
        return False
    with lock as acquired:
        return not acquired
