"""Read-only inspection of an image's root filesystem: stat, list, read, tar and grep.

The root is a host directory whose files are owned by host ids shifted by ``uid_shift``; every
id reported here is the one the image sees. Every user path is resolved inside the root (see
``_paths``), so absolute symlinks and ``..`` mean what they would inside the image and can never
reach a host file. Only regular files are ever opened for reading: opening a device node of the
image on the host would read the host's device.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sandtree.engine.layers._grep import GrepMatch, GrepResult, Submatch, grep
from sandtree.engine.layers._paths import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    normalise_path,
    open_root,
    openat2,
    reopen_regular,
    user_error,
)
from sandtree.errors import InvalidRequestError, SandtreeError

__all__ = [
    "FileItem",
    "GrepMatch",
    "GrepResult",
    "Submatch",
    "format_ls",
    "grep",
    "list_dir",
    "open_file",
    "stat_path",
    "write_tar",
]

_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_ID_RANGE = 65536
# /etc/passwd of a real image is a few KiB; the cap keeps a hostile image from costing memory.
_NAMES_FILE_CAP = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FileItem:
    """One file as the image sees it (the ConTree API's FileItem)."""

    path: str
    size: int
    owner: str | int
    group: str | int
    uid: int
    gid: int
    mode: int
    mtime: int
    nlink: int
    is_dir: bool
    is_regular: bool
    is_symlink: bool
    is_socket: bool
    is_fifo: bool
    symlink_to: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)


class _Names:
    """User and group names from the image's own /etc/passwd and /etc/group."""

    def __init__(self, rootfd: int) -> None:
        self.users = _parse_id_file(_read_small(rootfd, "/etc/passwd"))
        self.groups = _parse_id_file(_read_small(rootfd, "/etc/group"))

    def user(self, uid: int) -> str | int:
        return self.users.get(uid, uid)

    def group(self, gid: int) -> str | int:
        return self.groups.get(gid, gid)


def _read_small(rootfd: int, path: str) -> bytes:
    try:
        pathfd = openat2(rootfd, path, os.O_PATH)
    except OSError:
        return b""
    try:
        fd = reopen_regular(pathfd)
    except (OSError, SandtreeError):
        return b""
    finally:
        os.close(pathfd)
    with open(fd, "rb") as f:
        return f.read(_NAMES_FILE_CAP)


def _parse_id_file(data: bytes) -> dict[int, str]:
    names: dict[int, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] and fields[2].isdigit():
            # The first entry wins, as with getpwuid().
            names.setdefault(int(fields[2]), fields[0])
    return names


def _unshift(host_id: int, uid_shift: int) -> int:
    if uid_shift <= host_id < uid_shift + _ID_RANGE:
        return host_id - uid_shift
    return host_id


def _item(name: str, st: os.stat_result, target: str, names: _Names, uid_shift: int) -> FileItem:
    uid = _unshift(st.st_uid, uid_shift)
    gid = _unshift(st.st_gid, uid_shift)
    mode = st.st_mode
    return FileItem(
        path=name,
        size=st.st_size,
        owner=names.user(uid),
        group=names.group(gid),
        uid=uid,
        gid=gid,
        mode=mode,
        mtime=int(st.st_mtime),
        nlink=st.st_nlink,
        is_dir=stat.S_ISDIR(mode),
        is_regular=stat.S_ISREG(mode),
        is_symlink=stat.S_ISLNK(mode),
        is_socket=stat.S_ISSOCK(mode),
        is_fifo=stat.S_ISFIFO(mode),
        symlink_to=target,
    )


def _display_name(path: str) -> str:
    return posixpath.basename(posixpath.normpath(path).rstrip("/")) or "/"


def _open_user_path(rootfd: int, path: str, flags: int) -> int:
    try:
        return openat2(rootfd, path, flags)
    except OSError as exc:
        raise user_error(path, exc) from exc


def _stat_in(rootfd: int, path: str, names: _Names, uid_shift: int, *, follow: bool) -> FileItem:
    fd = _open_user_path(rootfd, path, os.O_PATH if follow else os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        # An empty name makes readlinkat act on the O_PATH fd of the link itself.
        target = os.readlink("", dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
    finally:
        os.close(fd)
    return _item(_display_name(path), st, target, names, uid_shift)


def stat_path(root: Path, path: str, *, uid_shift: int, follow: bool = True) -> FileItem:
    """Describe the file at image path ``path``; ``follow=False`` describes a symlink itself.

    Raises ``PathNotFoundError`` if the path does not exist in the image.
    """
    path = normalise_path(path)
    rootfd = open_root(root)
    try:
        return _stat_in(rootfd, path, _Names(rootfd), uid_shift, follow=follow)
    finally:
        os.close(rootfd)


def list_dir(root: Path, path: str, *, uid_shift: int) -> list[FileItem]:
    """List the directory at image path ``path``, sorted by name.

    A symlink to a directory is followed (inside the image); a file, or a symlink to anything
    else, gives a one-element list describing it. Entries are described without following
    their symlinks. Raises ``PathNotFoundError`` if the path does not exist.
    """
    path = normalise_path(path)
    rootfd = open_root(root)
    try:
        names = _Names(rootfd)
        try:
            dirfd = openat2(rootfd, path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            # Not a directory, a dangling symlink, or missing; _stat_in tells them apart.
            return [_stat_in(rootfd, path, names, uid_shift, follow=False)]
        except OSError as exc:
            raise user_error(path, exc) from exc
    finally:
        os.close(rootfd)
    try:
        items: list[FileItem] = []
        for name in sorted(os.listdir(dirfd)):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                target = os.readlink(name, dir_fd=dirfd) if stat.S_ISLNK(st.st_mode) else ""
            except FileNotFoundError:
                continue
            items.append(_item(name, st, target, names, uid_shift))
        return items
    finally:
        os.close(dirfd)


def format_ls(items: list[FileItem]) -> str:
    """Render ``items`` like ``ls -l`` (times in UTC, long-iso style), one line per item."""
    rows = [
        (
            stat.filemode(item.mode),
            str(item.nlink),
            str(item.owner),
            str(item.group),
            str(item.size),
            _format_time(item.mtime),
            item.path + (f" -> {item.symlink_to}" if item.is_symlink else ""),
        )
        for item in items
    ]
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        f"{mode} {nlink:>{widths[1]}} {owner:<{widths[2]}} {group:<{widths[3]}} "
        f"{size:>{widths[4]}} {when} {name}"
        for mode, nlink, owner, group, size, when, name in rows
    ]
    return "\n".join(lines) + "\n"


def _format_time(mtime: int) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime))
    except (OverflowError, OSError, ValueError):
        return str(mtime)


def open_file(root: Path, path: str) -> BinaryIO:
    """Open the regular file at image path ``path`` for reading, following symlinks in the image.

    Raises ``PathNotFoundError`` if it does not exist and ``InvalidRequestError`` if it is a
    directory or a special file.
    """
    path = normalise_path(path)
    rootfd = open_root(root)
    try:
        pathfd = _open_user_path(rootfd, path, os.O_PATH)
    finally:
        os.close(rootfd)
    try:
        mode = os.fstat(pathfd).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidRequestError(f"{path} is a directory; use list to see what it contains")
        if not stat.S_ISREG(mode):
            raise InvalidRequestError(
                f"{path} is not a regular file ({_kind(mode)}); only regular files can be read"
            )
        fd = reopen_regular(pathfd)
    finally:
        os.close(pathfd)
    return open(fd, "rb")


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
    )
    return next((kind for test, kind in kinds if test(mode)), "special file")


def write_tar(root: Path, path: str, out: BinaryIO, *, uid_shift: int) -> None:
    """Stream an uncompressed tar of the file or directory at image path ``path`` to ``out``.

    Names are relative to the parent of ``path`` (``/etc/apt`` gives ``apt``, ``apt/...``; ``/``
    gives ``.`` and top-level names). ``path`` itself is followed if it is a symlink; anything
    below it is archived as found: symlinks as symlinks, hard links as links to the first name,
    devices and FIFOs as such; sockets are skipped. Ids are the image's, not the host's.
    Raises ``PathNotFoundError`` before writing anything if ``path`` does not exist.
    """
    path = normalise_path(path)
    rootfd = open_root(root)
    try:
        names = _Names(rootfd)
        top = _open_user_path(rootfd, path, os.O_PATH)
    finally:
        os.close(rootfd)
    arcname = posixpath.basename(posixpath.normpath(path).rstrip("/")) or "."
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            writer = _TarWriter(tar, names, uid_shift)
            st = os.fstat(top)
            writer.add(top, "", arcname, st)
            if stat.S_ISDIR(st.st_mode):
                writer.add_tree(top, "" if arcname == "." else arcname)
    finally:
        os.close(top)


class _TarWriter:
    def __init__(self, tar: tarfile.TarFile, names: _Names, uid_shift: int) -> None:
        self.tar = tar
        self.names = names
        self.uid_shift = uid_shift
        self.links: dict[tuple[int, int], str] = {}

    def add_tree(self, top: int, prefix: str) -> None:
        """Archive everything below the directory ``top``, depth first in name order."""
        stack: list[tuple[int, Iterator[str], str]] = []
        first = self._open_dir(top, ".", prefix)
        if first is not None:
            stack.append(first)
        try:
            while stack:
                dirfd, entries, dir_arc = stack[-1]
                name = next(entries, None)
                if name is None:
                    stack.pop()
                    os.close(dirfd)
                    continue
                arc = f"{dir_arc}/{name}" if dir_arc else name
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    child = self._open_dir(dirfd, name, arc)
                    if child is not None:
                        self.add(child[0], "", arc, os.fstat(child[0]))
                        stack.append(child)
                else:
                    self.add(dirfd, name, arc, st)
        finally:
            for dirfd, _, _ in stack:
                os.close(dirfd)

    @staticmethod
    def _open_dir(dirfd: int, name: str, arc: str) -> tuple[int, Iterator[str], str] | None:
        try:
            fd = openat2(dirfd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, resolve=_STRICT)
        except OSError:
            # Vanished or replaced since it was listed; there is nothing left to archive.
            return None
        try:
            names = sorted(os.listdir(fd))
        except OSError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd, iter(names), arc

    def add(self, dirfd: int, name: str, arc: str, st: os.stat_result) -> None:
        """Add one entry; ``name`` is relative to ``dirfd``, or ``""`` for ``dirfd`` itself."""
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return
        info = tarfile.TarInfo(arc)
        info.mode = stat.S_IMODE(mode)
        info.uid = _unshift(st.st_uid, self.uid_shift)
        info.gid = _unshift(st.st_gid, self.uid_shift)
        info.uname = _name_or_empty(self.names.user(info.uid))
        info.gname = _name_or_empty(self.names.group(info.gid))
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=dirfd)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor = os.major(st.st_rdev)
            info.devminor = os.minor(st.st_rdev)
        elif stat.S_ISREG(mode):
            self._add_regular(dirfd, name, info, st)
            return
        else:
            return
        self.tar.addfile(info)

    def _add_regular(
        self, dirfd: int, name: str, info: tarfile.TarInfo, st: os.stat_result
    ) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            info.type = tarfile.LNKTYPE
            info.linkname = self.links[key]
            self.tar.addfile(info)
            return
        try:
            if name:
                pathfd = openat2(dirfd, name, os.O_PATH | os.O_NOFOLLOW, resolve=_STRICT)
            else:
                pathfd = os.dup(dirfd)
        except FileNotFoundError:
            return
        try:
            fd = reopen_regular(pathfd)
        finally:
            os.close(pathfd)
        with open(fd, "rb") as f:
            info.size = os.fstat(fd).st_size
            self.tar.addfile(info, f)
        if st.st_nlink > 1:
            self.links[key] = info.name


def _name_or_empty(name: str | int) -> str:
    return name if isinstance(name, str) else ""
