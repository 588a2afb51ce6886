"""One server per data dir: an exclusive lock file, held while the server runs.

Everything a data dir names on the host belongs to the one process that uses it: its
sandboxes in the runtime's state dir (which start-up deletes as stale), its network prefix,
subnet and iptables chains, its mounts. A second process on the same data dir would take all
of that for leftovers of a crash and remove it, so it must refuse to start instead.

``flock`` on ``<data dir>/server.lock``: the kernel drops the lock when the holder dies, so
a crash never leaves a lock behind, and there is no pid-file guesswork. Within one process
the lock is counted (the CLI holds it from the start and the engine takes it again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path

from sandtree.errors import ConflictError

__all__ = ["LOCK_FILE", "DataDirLock"]

LOCK_FILE = "server.lock"

_held: dict[str, tuple[int, int]] = {}  # real path -> (fd, holders in this process)
_guard = threading.Lock()


class DataDirLock:
    """The exclusive hold of one data dir; ``acquire`` raises if another process has it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._key = os.path.realpath(self.path)
        self._mine = False

    def acquire(self) -> DataDirLock:
        """Take the lock (or one more count of it); returns self.

        Raises:
            ConflictError: another process holds it.
        """
        if self._mine:
            return self
        with _guard:
            fd, count = _held.get(self._key, (-1, 0))
            if count == 0:
                fd = self._take()
            _held[self._key] = (fd, count + 1)
        self._mine = True
        return self

    def release(self) -> None:
        """Give back this object's count; the file lock goes with the last one."""
        if not self._mine:
            return
        self._mine = False
        with _guard:
            fd, count = _held.pop(self._key, (-1, 0))
            if count > 1:
                _held[self._key] = (fd, count - 1)
            elif fd >= 0:
                os.close(fd)  # closing the descriptor drops the flock

    def _take(self) -> int:
        # O_CLOEXEC: a sandbox runtime started later must not inherit (and so keep) the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            who = f"pid {holder}" if holder else "another process"
            raise ConflictError(
                f"another sandtree server ({who}) is using the data dir {self.path.parent}; "
                "stop it first, or give this server its own --data-dir (SANDTREE_DATA_DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip() or "0") or None
    return None
