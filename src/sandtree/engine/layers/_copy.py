"""Copy a root filesystem directory into a layer, safely, the way a layer tar is unpacked."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ._paths import SpecialFileError, open_regular
from ._writer import FileMeta, LayerWriter, UnpackStats

__all__ = ["copy_rootfs_dir"]


def _stat_meta(path: str, st: os.stat_result) -> FileMeta:
    xattrs: dict[str, bytes] = {}
    if not stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            for name in os.listxattr(path, follow_symlinks=False):
                xattrs[name] = os.getxattr(path, name, follow_symlinks=False)
    return FileMeta(
        uid=st.st_uid, gid=st.st_gid, mode=st.st_mode, mtime_ns=st.st_mtime_ns, xattrs=xattrs
    )


def copy_rootfs_dir(
    src: Path, dest: Path, *, uid_shift: int, max_bytes: int | None = None
) -> UnpackStats:
    """Copy a root filesystem directory into the empty layer directory ``dest``.

    Symlinks are copied, never followed; modes, mtimes and allowed xattrs are kept and owners
    are shifted (a file owned by 0 becomes ``uid_shift``). Hardlinks inside ``src`` stay
    hardlinks; device nodes and sockets are skipped with a warning.

    Raises:
        LimitExceededError: the copy grows past ``max_bytes``.
    """
    writer = LayerWriter(dest, uid_shift=uid_shift, max_bytes=max_bytes)
    try:
        writer.directory((), _stat_meta(str(src), os.stat(src)))
        inodes: dict[tuple[int, int], tuple[str, ...]] = {}
        stack: list[tuple[str, tuple[str, ...]]] = [(str(src), ())]
        while stack:
            dirpath, parts = stack.pop()
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                here, meta = (*parts, entry.name), _stat_meta(entry.path, st)
                if stat.S_ISDIR(st.st_mode):
                    writer.directory(here, meta)
                    stack.append((entry.path, here))
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in inodes:
                        writer.hardlink(here, inodes[key])
                        continue
                    try:
                        fd = open_regular(entry.path)
                    except SpecialFileError:
                        writer.warn(f"{'/'.join(here)}: changed while it was copied; skipped")
                        continue
                    with open(fd, "rb") as f:
                        writer.regular(here, meta, f, st.st_size)
                    if st.st_nlink > 1:
                        inodes[key] = here
                elif stat.S_ISLNK(st.st_mode):
                    writer.symlink(here, os.readlink(entry.path), meta)
                elif stat.S_ISFIFO(st.st_mode):
                    writer.fifo(here, meta)
                else:
                    writer.warn(f"{'/'.join(here)}: device node or socket skipped")
    except BaseException:
        writer.close()
        raise
    return writer.finish()
