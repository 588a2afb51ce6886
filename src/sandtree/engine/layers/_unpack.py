"""Unpack OCI/Docker layer tarballs into overlayfs upper-dir format, safely.

Whiteouts become character devices 0:0 and ``.wh..wh..opq`` becomes the
``trusted.overlay.opaque`` xattr. Every path is created relative to file descriptors
opened with ``O_NOFOLLOW`` from the layer root, so no entry (nor a symlink extracted
earlier) can make us write outside ``dest``. Owners are shifted into the sandbox uid range.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from sandtree.errors import InvalidRequestError

from ._compression import DECOMPRESSION_ERRORS, open_decompressed
from ._writer import OPAQUE_MARKER, WHITEOUT_PREFIX, FileMeta, LayerWriter, UnpackStats

__all__ = ["UnpackStats", "unpack_layer"]


def split_path(name: str) -> tuple[str, ...] | None:
    """Normalise a tar member name to path components; ``None`` if it escapes the root."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


class _PaddedTail(io.RawIOBase):
    """Ends a tar stream that stops right after a member's data with the padding and
    end-of-archive blocks it lacks (umoci 0.4 writes such layers; Go's archive/tar, as used
    by containerd, accepts them). ``end`` is where the real data stopped, so a member cut
    short is still caught by the caller."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pos = 0
        self._pad = 0
        self.end: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.end is None:
            data = self._stream.read(len(view))
            if data:
                view[: len(data)] = data
                self._pos += len(data)
                return len(data)
            self.end = self._pos
            self._pad = (-self._pos) % 512 + 1024
        n = min(len(view), self._pad)
        view[:n] = bytes(n)
        self._pad -= n
        return n


def _mtime_ns(member: tarfile.TarInfo) -> int:
    # PAX keeps nanoseconds as a decimal string; tarfile's float would lose them.
    text = member.pax_headers.get("mtime")
    if text:
        whole, _, frac = text.partition(".")
        with contextlib.suppress(ValueError):
            sign = -1 if whole.startswith("-") else 1
            return int(whole) * 10**9 + sign * int((frac + "000000000")[:9] or "0")
    return int(member.mtime) * 10**9


def _meta(member: tarfile.TarInfo) -> FileMeta:
    prefix = "SCHILY.xattr."
    xattrs = {
        key[len(prefix) :]: value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(prefix)
    }
    return FileMeta(
        uid=member.uid, gid=member.gid, mode=member.mode, mtime_ns=_mtime_ns(member), xattrs=xattrs
    )


def _apply_member(writer: LayerWriter, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    parts = split_path(member.name)
    if parts is None:
        writer.warn(f"{member.name!r}: path escapes the layer root; skipped")
        return
    base = parts[-1] if parts else ""
    if base == OPAQUE_MARKER:
        writer.opaque(parts[:-1])
    elif base.startswith(WHITEOUT_PREFIX):
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
            writer.warn(f"{member.name!r}: reserved whiteout name; skipped")
        else:
            writer.whiteout((*parts[:-1], hidden), _mtime_ns(member))
    elif member.isdir():
        writer.directory(parts, _meta(member))
    elif not parts:
        writer.warn(f"{member.name!r}: non-directory entry for the layer root; skipped")
    elif member.isreg():
        writer.regular(parts, _meta(member), tar.extractfile(member), member.size)
    elif member.issym():
        writer.symlink(parts, member.linkname, _meta(member))
    elif member.islnk():
        target = split_path(member.linkname)
        if not target:
            writer.warn(f"{member.name!r}: hardlink target escapes the layer root; skipped")
        else:
            writer.hardlink(parts, target)
    elif member.isfifo():
        writer.fifo(parts, _meta(member))
    elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
        writer.whiteout(parts, _mtime_ns(member))
    elif member.isdev():
        writer.warn(f"{member.name!r}: device node skipped (sandboxes get their own /dev)")
    else:
        writer.warn(f"{member.name!r}: unsupported tar entry type {member.type!r}; skipped")


_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    *DECOMPRESSION_ERRORS,
)


def unpack_layer(
    tar_stream: BinaryIO,
    dest: Path,
    *,
    uid_shift: int,
    max_bytes: int,
    compression: str | None = None,
) -> UnpackStats:
    """Unpack one layer tarball into the empty directory ``dest`` in overlay upper format.

    Args:
        tar_stream: the layer, read once front to back (need not be seekable).
        dest: an existing empty directory; on error the caller deletes it.
        uid_shift: host uid/gid that image id 0 maps to.
        max_bytes: bound on the file bytes written (decompression bombs).
        compression: ``"gzip"``, ``"zstd"``, ``"none"`` or ``None`` to sniff magic bytes.

    Returns:
        Entries created, bytes written, and warnings for entries that were skipped
        (path traversal, writes through symlinks, device nodes, foreign hardlinks).

    Raises:
        LimitExceededError: the layer expands past ``max_bytes``.
        InvalidRequestError: the stream is not a (compressed) tar archive.
    """
    writer = LayerWriter(dest, uid_shift=uid_shift, max_bytes=max_bytes)
    try:
        with open_decompressed(tar_stream, compression) as raw:
            try:
                tail = _PaddedTail(raw)
                with tarfile.open(fileobj=tail, mode="r|") as tar:
                    for member in tar:
                        _apply_member(writer, tar, member)
                        if tail.end is not None and member.offset_data + member.size > tail.end:
                            raise InvalidRequestError(f"layer is truncated in {member.name!r}")
            except _STREAM_ERRORS as exc:
                raise InvalidRequestError(f"layer is not a valid tar archive: {exc}") from exc
    except BaseException:
        writer.close()
        raise
    return writer.finish()
