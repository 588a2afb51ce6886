"""A layer writer that creates entries under a layer root without following symlinks.

Every path is created relative to file descriptors opened with ``O_NOFOLLOW`` from the layer
root, so no entry (nor a symlink created earlier) can make us write outside it. Owners are
shifted into the sandbox uid range and xattrs are filtered and remapped on the way in.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sandtree.errors import LimitExceededError

from ._compression import CHUNK
from ._ids import NOBODY, in_sandbox_range, shift_id, unshift_id

__all__ = ["FileMeta", "LayerWriter", "UnpackStats", "remap_xattr", "shift_id", "unshift_id"]

OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_MAX_WARNINGS = 100
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CAP_V2, _CAP_V3 = 0x02000000, 0x03000000
_ACL_USER, _ACL_GROUP = 0x02, 0x08


@dataclasses.dataclass(kw_only=True)
class UnpackStats:
    """What an unpack or copy produced: entries created, file bytes written, skipped things."""

    files: int = 0
    bytes: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileMeta:
    """Ownership and metadata of an entry, with ids as seen inside the image."""

    uid: int
    gid: int
    mode: int
    mtime_ns: int
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)


def remap_xattr(name: str, value: bytes, map_id: Callable[[int], int]) -> bytes | None:
    """Return the value to store for an xattr with ids remapped, or ``None`` to drop it.

    Only ``user.*``, POSIX ACLs and ``security.capability`` cross the layer boundary:
    ``trusted.*`` would let an image forge overlay metadata and other ``security.*`` labels
    mean nothing here. Ids inside ACLs and the capability root id are host ids to the
    kernel, so they are remapped like file owners.
    """
    if name.startswith("user."):
        return value
    if name in ("system.posix_acl_access", "system.posix_acl_default"):
        if len(value) < 4 or (len(value) - 4) % 8:
            return None
        out = bytearray(value)
        for off in range(4, len(value), 8):
            tag, _perm, ident = struct.unpack_from("<HHI", value, off)
            if tag in (_ACL_USER, _ACL_GROUP):
                struct.pack_into("<I", out, off + 4, map_id(ident))
        return bytes(out)
    if name == "security.capability" and len(value) >= 4:
        (magic,) = struct.unpack_from("<I", value)
        body = value[4:20]
        if magic & 0xFF000000 == _CAP_V2 and len(value) == 20:
            rootid = map_id(0)
        elif magic & 0xFF000000 == _CAP_V3 and len(value) == 24:
            rootid = map_id(struct.unpack_from("<I", value, 20)[0])
        else:
            return None
        flags = magic & 0x00FFFFFF
        # v3 pins the capability to one namespace root: a host-side v3 cap is inert on the
        # host; rootid 0 is written as plain v2, which is what images carry.
        if rootid == 0:
            return struct.pack("<I", _CAP_V2 | flags) + body
        return struct.pack("<I", _CAP_V3 | flags) + body + struct.pack("<I", rootid)
    return None


class LayerWriter:
    """Creates entries under a layer root without ever following a symlink.

    Paths are tuples of components. Parents are walked with ``openat(O_NOFOLLOW)``;
    a parent that is a symlink or a non-directory makes the entry be skipped with a warning.
    """

    def __init__(self, dest: Path, *, uid_shift: int, max_bytes: int | None) -> None:
        self.stats = UnpackStats()
        self._shift = uid_shift
        self._max = max_bytes
        self._root = os.open(dest, _DIR_FLAGS)
        self._cache: tuple[tuple[str, ...], int] | None = None
        self._linkable: set[tuple[str, ...]] = set()
        self._dir_times: dict[tuple[str, ...], int] = {}
        self._dropped: Counter[str] = Counter()
        self._suppressed = 0
        self._clamped = 0
        os.chown(self._root, uid_shift, uid_shift)  # the image root is owned by (shifted) root

    def close(self) -> None:
        """Release descriptors without finishing (used on error)."""
        self._drop_cache()
        os.close(self._root)

    def finish(self) -> UnpackStats:
        """Apply deferred directory mtimes, summarise warnings and close."""
        for parts, mtime_ns in self._dir_times.items():
            fd = self._open_dir(parts, create=False) if parts else os.dup(self._root)
            if fd is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.close(fd)
        for name, count in sorted(self._dropped.items()):
            self.warn(f"dropped xattr {name} on {count} entries (not allowed in layers)")
        if self._clamped:
            self.warn(
                f"{self._clamped} owner ids outside 0..65535 (ids a sandbox cannot have) "
                f"became nobody ({NOBODY}), without setuid/setgid bits"
            )
        if self._suppressed:
            self.stats.warnings.append(f"... and {self._suppressed} more warnings")
        self.close()
        return self.stats

    def warn(self, message: str) -> None:
        """Record a skipped entry; past a hundred, only count them."""
        if len(self.stats.warnings) < _MAX_WARNINGS:
            self.stats.warnings.append(message)
        else:
            self._suppressed += 1

    def _drop_cache(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def _open_dir(self, parts: tuple[str, ...], *, create: bool, entry: str = "") -> int | None:
        """Open the directory at ``parts`` (a new fd), creating missing ones if asked.

        ``entry`` names the tar entry being placed, for the warning when a component is a
        symlink or a file (only given when creating: a lookup may fail quietly).
        """
        fd = os.dup(self._root)
        try:
            for i, part in enumerate(parts):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._mkdir(fd, part, opaque=False)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if not (create and _is_whiteout(st)):
                        if entry:
                            where = "/".join(parts[: i + 1])
                            self.warn(f"{entry}: {where} is not a directory (a symlink?); skipped")
                        os.close(fd)
                        return None
                    # Later entries of this layer beat its own whiteout (OCI spec): the dir
                    # is new here and must still hide what lower layers had at that path.
                    os.unlink(part, dir_fd=fd)
                    self._mkdir(fd, part, opaque=True)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _charge(self, size: int) -> None:
        # Every entry costs at least a tar header, so a flood of empty files stops too.
        if self._max is not None and self.stats.bytes + size + 512 * self.stats.files > self._max:
            raise LimitExceededError(
                f"layer expands past {self._max} bytes; raise the import size limit or use a "
                "smaller image"
            )

    def _parent(self, parts: tuple[str, ...]) -> int | None:
        """A cached fd of the parent of ``parts`` (owned by the writer, do not close)."""
        self._charge(0)
        key = parts[:-1]
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._drop_cache()
        fd = self._open_dir(key, create=True, entry="/".join(parts))
        if fd is not None:
            self._cache = (key, fd)
        return fd

    def _mkdir(self, parent: int, name: str, *, opaque: bool) -> None:
        os.mkdir(name, 0o755, dir_fd=parent)
        os.chown(name, self._shift, self._shift, dir_fd=parent, follow_symlinks=False)
        if opaque:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            os.setxattr(fd, OPAQUE_XATTR, b"y")
            os.close(fd)

    def _clear(self, parent: int, name: str, *, keep_dir: bool) -> os.stat_result | None:
        """Remove what is at ``name`` (unless a dir we keep); return its old lstat."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return st

    def _owner(self, meta: FileMeta) -> tuple[int, int, int]:
        mode = meta.mode & 0o7777
        # An owner the sandbox has no id for becomes nobody (as the kernel would show it),
        # never a host id of its own; and setuid/setgid only for owners the sandbox can
        # actually be: never for "nobody".
        if not in_sandbox_range(meta.uid):
            mode &= ~stat.S_ISUID
            self._clamped += 1
        if not in_sandbox_range(meta.gid):
            mode &= ~stat.S_ISGID
            self._clamped += 1
        return shift_id(meta.uid, self._shift), shift_id(meta.gid, self._shift), mode

    def _finish_fd(self, fd: int, meta: FileMeta, *, is_dir: bool = False) -> None:
        uid, gid, mode = self._owner(meta)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after chown, which clears setuid bits
        for name, value in meta.xattrs.items():
            mapped = remap_xattr(name, value, lambda i: shift_id(i, self._shift))
            if mapped is None:
                self._dropped[name] += 1
                continue
            try:
                os.setxattr(fd, name, mapped)
            except OSError as exc:
                self.warn(f"xattr {name} not applied: {exc.strerror}")
        if not is_dir:
            os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def directory(self, parts: tuple[str, ...], meta: FileMeta) -> None:
        """Create (or update the metadata of) a directory."""
        if parts:
            parent = self._parent(parts)
            if parent is None:
                return
            old = self._clear(parent, parts[-1], keep_dir=True)
            if old is None or not stat.S_ISDIR(old.st_mode):
                self._mkdir(parent, parts[-1], opaque=old is not None and _is_whiteout(old))
                self.stats.files += 1
            self._linkable.discard(parts)
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        else:
            fd = os.dup(self._root)
        try:
            self._finish_fd(fd, meta, is_dir=True)
        finally:
            os.close(fd)
        self._dir_times[parts] = meta.mtime_ns  # children would bump it: set at the end

    def regular(
        self, parts: tuple[str, ...], meta: FileMeta, data: IO[bytes] | None, size: int
    ) -> None:
        """Create a regular file with ``size`` bytes from ``data``.

        Raises:
            LimitExceededError: the layer grows past ``max_bytes``.
        """
        self._charge(size)
        parent = self._parent(parts)
        if parent is None:
            return
        self._clear(parent, parts[-1], keep_dir=False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
        try:
            written = 0
            while data is not None and written < size:
                chunk = data.read(min(CHUNK, size - written))
                if not chunk:
                    break
                with memoryview(chunk) as view:
                    done = 0
                    while done < len(view):
                        done += os.write(fd, view[done:])
                written += len(chunk)
            self.stats.bytes += written
            self._finish_fd(fd, meta)
        finally:
            os.close(fd)
        self._created(parts)

    def symlink(self, parts: tuple[str, ...], target: str, meta: FileMeta) -> None:
        """Create a symlink; the target is kept verbatim (it resolves inside the rootfs)."""
        self._node(parts, meta, lambda parent, name: os.symlink(target, name, dir_fd=parent), False)

    def fifo(self, parts: tuple[str, ...], meta: FileMeta) -> None:
        """Create a named pipe."""
        self._node(parts, meta, lambda parent, name: os.mkfifo(name, 0o600, dir_fd=parent), True)

    def _node(
        self,
        parts: tuple[str, ...],
        meta: FileMeta,
        make: Callable[[int, str], None],
        chmod: bool,
    ) -> None:
        parent = self._parent(parts)
        if parent is None:
            return
        name = parts[-1]
        self._clear(parent, name, keep_dir=False)
        make(parent, name)
        uid, gid, mode = self._owner(meta)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        if chmod:  # symlinks have no mode; this fifo was just created by us
            os.chmod(name, mode, dir_fd=parent)
        os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent, follow_symlinks=False)
        self._created(parts)

    def hardlink(self, parts: tuple[str, ...], target: tuple[str, ...]) -> None:
        """Link to a file, symlink or fifo this writer created earlier; skip anything else."""
        if target == parts:
            return
        skipped = f"{'/'.join(parts)}: hardlink to {'/'.join(target)!r}, which is not an "
        skipped += "earlier file of this layer; skipped"
        src_dir = self._open_dir(target[:-1], create=False) if target in self._linkable else None
        if src_dir is None:
            self.warn(skipped)
            return
        try:
            parent = self._parent(parts)
            if parent is not None:
                self._clear(parent, parts[-1], keep_dir=False)
                os.link(
                    target[-1],
                    parts[-1],
                    src_dir_fd=src_dir,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
                self._created(parts)
        except FileNotFoundError:  # the target was replaced by a directory meanwhile
            self.warn(skipped)
        finally:
            os.close(src_dir)

    def whiteout(self, parts: tuple[str, ...], mtime_ns: int | None = None) -> None:
        """Hide ``parts`` of lower layers; what this layer already has there stays."""
        parent = self._parent(parts)
        if parent is None:
            return
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.mknod(parts[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            os.chown(parts[-1], self._shift, self._shift, dir_fd=parent, follow_symlinks=False)
            if mtime_ns is not None:  # invisible through overlay, but keeps exports stable
                times = (mtime_ns, mtime_ns)
                os.utime(parts[-1], ns=times, dir_fd=parent, follow_symlinks=False)
            self.stats.files += 1
            self._linkable.discard(parts)
            return
        if stat.S_ISDIR(st.st_mode):  # this layer's dir wins, but lower content is hidden
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            os.setxattr(fd, OPAQUE_XATTR, b"y")
            os.close(fd)

    def opaque(self, parts: tuple[str, ...]) -> None:
        """Mark a directory opaque; entries this layer already put in it are kept."""
        marker = "/".join((*parts, OPAQUE_MARKER))
        fd = self._open_dir(parts, create=True, entry=marker) if parts else None
        if fd is None:
            if not parts:
                self.warn("opaque marker at the layer root ignored")
            return
        os.setxattr(fd, OPAQUE_XATTR, b"y")
        os.close(fd)

    def _created(self, parts: tuple[str, ...]) -> None:
        self.stats.files += 1
        self._linkable.add(parts)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
