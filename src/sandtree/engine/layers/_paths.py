"""Resolving and writing paths *inside* an image root, never on the host.

An image's root filesystem is an ordinary host directory, but every path in it belongs to the
image: an absolute symlink ``/etc/x -> /etc/shadow`` means the image's ``/etc/shadow``, and
``..`` stops at the image root. Joining strings on the host would get both wrong and let an image
(or a user) read or write host files. Every lookup here therefore goes through ``openat2(2)``
with ``RESOLVE_IN_ROOT``, which makes the kernel treat the root fd as ``/`` for that one lookup,
the way ``chroot`` would, without races between checking a path and opening it.

The helpers raise ``OSError`` for filesystem failures (the caller decides whether ENOENT means
"not found" to a user) and ``InvalidRequestError`` for requests that can never succeed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sandtree.errors import InvalidRequestError, PathNotFoundError

__all__ = [
    "DEFAULT_RESOLVE",
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "SpecialFileError",
    "lstat_beneath",
    "make_parents_in_root",
    "normalise_path",
    "open_regular",
    "open_root",
    "openat2",
    "reopen_regular",
    "resolve_in_root",
    "split_components",
    "user_error",
    "walk_tree",
    "write_file_in_root",
]

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
DEFAULT_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
#: Below a directory fd, taking every component as it is: a symlink anywhere fails (ELOOP).
_LITERAL = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# Image content is opened with these: a FIFO must never make the open (or a read) wait for a
# writer, and a terminal must never become our controlling one. O_NONBLOCK changes nothing
# for the regular files that are then the only thing kept open.
_NO_WAIT = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# openat2 arrived after the syscall tables were unified, so it is 437 on every architecture
# Linux supports except alpha, which sandtree does not run on.
_SYS_OPENAT2 = 437
# The kernel retries RESOLVE_IN_ROOT lookups itself, but gives up with EAGAIN when a rename
# elsewhere on the system races a ".." step; a few retries make that invisible.
_EAGAIN_RETRIES = 16
_CHUNK = 1 << 20


class SpecialFileError(OSError):
    """A path expected to be a regular file is something else (a FIFO, a device, a socket,
    a directory or a symlink): it was not opened for its contents."""


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


# A private CDLL instance so that setting argtypes cannot clash with other users of libc.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(_OpenHow),
    ctypes.c_size_t,
]


def normalise_path(path: str) -> str:
    """Return ``path`` as an absolute image path; ``""`` means ``/``.

    Raises ``InvalidRequestError`` for NUL bytes, which no POSIX path can contain and which
    would otherwise truncate the path silently at the C boundary.
    """
    if "\x00" in path:
        raise InvalidRequestError(f"path {path!r} contains a NUL byte; paths cannot contain NUL")
    if not path.startswith("/"):
        path = "/" + path
    return path


def split_components(path: str) -> list[str]:
    """Split an image path into its non-empty components, dropping ``.`` but keeping ``..``."""
    return [part for part in normalise_path(path).split("/") if part not in ("", ".")]


def user_error(path: str, exc: OSError) -> Exception:
    """Translate a failed lookup of the image path ``path`` into the error a user should see.

    Missing paths become ``PathNotFoundError`` pointing at the parent to list; symlink loops and
    over-long names become ``InvalidRequestError``; anything else is returned unchanged because
    it is a host problem, not the user's.
    """
    shown = normalise_path(path)
    parent = posixpath.dirname(posixpath.normpath(shown).rstrip("/")) or "/"
    if exc.errno == errno.ENOENT:
        return PathNotFoundError(
            f"{shown} does not exist in the image; list {parent} to see what it contains"
        )
    if exc.errno == errno.ENOTDIR:
        return PathNotFoundError(
            f"{shown} does not exist in the image: one of its parent components is not a "
            f"directory; list {parent} to see what it contains"
        )
    if exc.errno == errno.ELOOP:
        return InvalidRequestError(f"{shown}: too many levels of symbolic links in the image")
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidRequestError(f"{shown}: path or file name too long")
    return exc


def open_root(root: Path) -> int:
    """Open ``root`` as an ``O_PATH`` directory fd to resolve image paths against."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def openat2(
    dirfd: int,
    path: str,
    flags: int,
    mode: int = 0,
    resolve: int = DEFAULT_RESOLVE,
) -> int:
    """Call ``openat2(2)``; return the new fd (always close-on-exec) or raise ``OSError``.

    With the default ``resolve``, ``dirfd`` acts as ``/`` for this lookup: absolute symlinks and
    ``..`` cannot leave it.
    """
    if resolve & RESOLVE_IN_ROOT:
        path = normalise_path(path)
    elif "\x00" in path:
        raise InvalidRequestError(f"path {path!r} contains a NUL byte; paths cannot contain NUL")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    encoded = os.fsencode(path)
    err = errno.EAGAIN
    for _ in range(_EAGAIN_RETRIES):
        fd = int(_syscall(_SYS_OPENAT2, dirfd, encoded, ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            break
    raise OSError(err, os.strerror(err), path)


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> int:
    """Return an ``O_PATH`` fd for the image path ``path`` under ``root``.

    With ``follow_last=False`` a symlink as last component is returned itself, not its target.
    Raises ``OSError`` (e.g. ENOENT, ENOTDIR, ELOOP) when the path does not resolve.
    """
    rootfd = open_root(root)
    try:
        flags = os.O_PATH if follow_last else os.O_PATH | os.O_NOFOLLOW
        return openat2(rootfd, path, flags)
    finally:
        os.close(rootfd)


def reopen_regular(pathfd: int) -> int:
    """Open the regular file behind the ``O_PATH`` fd ``pathfd`` for reading.

    Reopening through ``/proc/self/fd`` reads exactly the inode that was checked, so a device
    node or FIFO in an image can never be opened on the host (reading a block device node of a
    host disk, or blocking forever on a FIFO).
    """
    if not stat.S_ISREG(os.fstat(pathfd).st_mode):
        raise InvalidRequestError("not a regular file")
    fd = os.open(f"/proc/self/fd/{pathfd}", os.O_RDONLY | _NO_WAIT)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidRequestError("not a regular file")
    return fd


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open the regular file at the host path ``path`` (an entry of a layer, a run's upper dir
    or a view, found by a walk) for reading and return its fd.

    The last component is never followed and the open never waits (``O_NONBLOCK``), so an
    entry swapped for a symlink or a FIFO since it was listed cannot send us to a host file or
    freeze the thread. Raises ``SpecialFileError`` for anything but a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _NO_WAIT, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpecialFileError(errno.ELOOP, "a symlink, not a regular file", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpecialFileError(errno.EINVAL, "not a regular file", path)
    return fd


def lstat_beneath(rootfd: int, rel: str) -> os.stat_result:
    """``lstat`` of ``rel`` below the directory ``rootfd``, every component taken literally.

    A plain ``os.lstat(root / rel)`` follows symlinks in the *parents*: with a symlink
    ``a -> /etc`` in a layer, ``a/passwd`` would be the host's file. Here a symlink anywhere
    but the last component fails with ``ELOOP`` (a non-directory with ``ENOTDIR``), which
    means the entry ``rel`` does not exist as such in that tree.
    """
    fd = openat2(rootfd, rel, os.O_PATH | os.O_NOFOLLOW, resolve=_LITERAL)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def walk_tree(top: Path, *, sort: bool = False) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below the host directory ``top`` as ``(relative path, lstat)``, pre-order
    (``sort``: in name order, for reproducible output), ``top`` itself not included.

    Never follows a symlink, not even one a sandbox swaps in for a directory while the walk
    runs (a run's upper dir is walked while it writes): each directory is opened from ``top``
    with every component taken literally, so the walk cannot leave ``top``. A directory that
    vanished or changed kind since it was listed is skipped. One directory fd is open at a
    time, however wide the tree. Raises ``OSError`` if ``top`` is not a directory.
    """
    topfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pending: list[tuple[str, os.stat_result]] = []
        _list_into(pending, topfd, "", sort)
        while pending:
            rel, st = pending.pop()
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                try:
                    fd = openat2(topfd, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 resolve=_LITERAL)  # fmt: skip
                except OSError:
                    continue  # gone, or a symlink now: nothing of ours below it
                try:
                    _list_into(pending, fd, rel + "/", sort)
                finally:
                    os.close(fd)
    finally:
        os.close(topfd)


def _list_into(
    pending: list[tuple[str, os.stat_result]], dirfd: int, prefix: str, sort: bool
) -> None:
    entries: list[tuple[str, os.stat_result]] = []
    with os.scandir(dirfd) as it:
        for entry in it:
            try:
                entries.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    if sort:
        entries.sort(reverse=True)  # popped from the end: first name first
    pending.extend((prefix + name, st) for name, st in entries)


def make_parents_in_root(rootfd: int, path: str, *, uid: int, gid: int, mode: int = 0o755) -> int:
    """Create the missing parent directories of ``path`` and return an ``O_PATH`` fd of the parent.

    ``uid``/``gid`` are *host* ids (already shifted). Each prefix is resolved from ``rootfd``
    with ``RESOLVE_IN_ROOT`` so that ``..`` and symlinked parents keep the kernel's meaning but
    stay inside the image; a missing directory is created with ``mkdirat`` on the fd of the
    prefix before it, never by joining strings on the host.
    """
    parts = split_components(path)
    parent = os.dup(rootfd)
    try:
        for i, name in enumerate(parts[:-1]):
            prefix = "/" + "/".join(parts[: i + 1])
            try:
                nextfd = openat2(rootfd, prefix, os.O_PATH | os.O_DIRECTORY)
            except FileNotFoundError:
                nextfd = _mkdir_at(parent, name, prefix, uid=uid, gid=gid, mode=mode)
            except NotADirectoryError:
                raise InvalidRequestError(
                    f"cannot create {normalise_path(path)}: {prefix} exists and is not a directory"
                ) from None
            os.close(parent)
            parent = nextfd
    except BaseException:
        os.close(parent)
        raise
    return parent


def _mkdir_at(parent: int, name: str, prefix: str, *, uid: int, gid: int, mode: int) -> int:
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        # The name exists but did not resolve: a symlink whose target is missing.
        raise InvalidRequestError(
            f"cannot create {prefix}: it is a symlink to a missing directory"
        ) from None
    fd = openat2(parent, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, uid, gid)
        # mkdir applied the umask; the caller asked for this exact mode.
        os.fchmod(fd, mode)
        return openat2(fd, ".", os.O_PATH | os.O_DIRECTORY)
    finally:
        os.close(fd)


def write_file_in_root(
    root: Path,
    path: str,
    data_source: BinaryIO | bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
) -> None:
    """Create or replace the file at image path ``path`` under ``root`` with ``data_source``.

    Missing parents are created (owned by ``uid``/``gid``, which are host ids). An existing
    symlink at ``path`` is replaced, never followed. An existing file with other hard links, or
    a special file, is replaced too, so the write cannot change another name's contents (layers
    may share inodes) or block on a FIFO. Raises ``InvalidRequestError`` if ``path`` is a
    directory.
    """
    parts = split_components(path)
    if not parts or parts[-1] == "..":
        raise InvalidRequestError(f"cannot write {normalise_path(path)}: it is a directory")
    name = parts[-1]
    rootfd = open_root(root)
    try:
        parent = make_parents_in_root(rootfd, path, uid=uid, gid=gid)
    finally:
        os.close(rootfd)
    try:
        _replace_unsafe_existing(parent, name, path)
        fd = openat2(
            parent,
            name,
            os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW | _NO_WAIT,
            mode & 0o7777,
            resolve=_LITERAL,
        )
    finally:
        os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            # Made a FIFO again since it was replaced above (only a sandbox running over this
            # root could): never write into it.
            raise InvalidRequestError(
                f"cannot write {normalise_path(path)}: it is not a regular file"
            )
        _write_all(fd, data_source)
        os.fchown(fd, uid, gid)
        # After fchown, which clears set-id bits, so a requested setuid bit survives.
        os.fchmod(fd, mode & 0o7777)
    finally:
        os.close(fd)


def _replace_unsafe_existing(parent: int, name: str, path: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InvalidRequestError(
            f"cannot write {normalise_path(path)}: it is a directory; choose a file path inside it"
        )
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.unlink(name, dir_fd=parent)


def _write_all(fd: int, data_source: BinaryIO | bytes) -> None:
    if isinstance(data_source, bytes | bytearray | memoryview):
        view = memoryview(data_source)
        while view:
            view = view[os.write(fd, view) :]
        return
    while chunk := data_source.read(_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
