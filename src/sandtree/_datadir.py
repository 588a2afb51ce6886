"""The data dir is the server's alone: directories 0700, files 0600.

It holds what no other local account may see or use: the databases (run output, env values,
token hashes), the admin token, uploaded files, and layers and run dirs with the images'
setuid files (owned by shifted ids, which are ordinary host accounts). A world-readable data
dir would hand all of that to every user of the host, so every directory of it is made 0700
and every database 0600, also when an older sandtree made them with the umask's modes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite gives these its database's mode when it creates them, but older ones stay as made.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

logger = logging.getLogger(__name__)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make ``path`` itself 0700; returns it.

    Parents keep their modes: they are the operator's (``~/.local/share``, ``/var/lib``).
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if missing and make it (and a SQLite file's ``-wal``, ``-shm``
    and ``-journal``) 0600; returns it. Call before ``sqlite3.connect``, which would create
    the database with the umask's mode."""
    # O_NOFOLLOW: a symlink planted at the name must not make us chmod its target.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _fchmod(fd, path)
    finally:
        os.close(fd)
    for suffix in _SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.is_file() and not side.is_symlink():
            _chmod(side, FILE_MODE)
    return path


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except PermissionError:
        # Not ours to change (another user's dir given as the data dir): say so, go on.
        logger.warning("cannot make %s private (mode %o): not its owner", path, mode)


def _fchmod(fd: int, path: Path) -> None:
    try:
        os.fchmod(fd, FILE_MODE)
    except PermissionError:
        logger.warning("cannot make %s private (mode %o): not its owner", path, FILE_MODE)
