"""Export an overlay upper-format layer as an OCI layer tarball (the reverse of unpacking)."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ._paths import open_regular, walk_tree
from ._writer import OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, remap_xattr, unshift_id

__all__ = ["write_layer_tar"]


def _walk(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """Pre-order, name-sorted walk (so the tar is reproducible), never following a link."""
    yield ".", str(root), os.lstat(root)
    for rel, st in walk_tree(root, sort=True):
        yield rel, os.path.join(root, rel), st


def _info(
    name: str, st: os.stat_result, uid_shift: int, kind: bytes, xattrs_of: str | None = None
) -> tarfile.TarInfo:
    """A header for ``st``; with ``xattrs_of``, that path's xattrs go into PAX records."""
    info = tarfile.TarInfo(name)
    headers: dict[str, str] = {}
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = unshift_id(st.st_uid, uid_shift)
    info.gid = unshift_id(st.st_gid, uid_shift)
    ns = st.st_mtime_ns
    info.mtime = max(ns // 10**9, 0)
    if ns % 10**9 or ns < 0:  # PAX keeps what the whole-second ustar field cannot
        sign, whole = ("-", -ns) if ns < 0 else ("", ns)
        headers["mtime"] = f"{sign}{whole // 10**9}.{whole % 10**9:09d}"
    if xattrs_of is not None:
        headers.update(_xattr_records(xattrs_of, uid_shift))
    info.pax_headers = headers
    return info


def _xattr_records(path: str, uid_shift: int) -> dict[str, str]:
    records: dict[str, str] = {}
    for name in sorted(os.listxattr(path, follow_symlinks=False)):
        if name == OPAQUE_XATTR:
            continue  # written as a .wh..wh..opq entry
        raw = os.getxattr(path, name, follow_symlinks=False)
        value = remap_xattr(name, raw, lambda i: unshift_id(i, uid_shift))
        if name == "security.capability" and raw[3:4] == b"\x02":
            value = raw  # v2 is valid in every namespace already: keep it as images carry it
        if value is not None:
            # tarfile writes surrogate-escaped values back as the original bytes
            records[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return records


def write_layer_tar(layer: Path, out: BinaryIO, *, uid_shift: int) -> None:
    """Write the upper-format ``layer`` to ``out`` as an uncompressed OCI layer tar.

    Whiteouts (char devices 0:0) become ``.wh.<name>`` entries and opaque directories get a
    ``<dir>/.wh..wh..opq`` entry; owners are unshifted back to image ids and hardlinks
    within the layer stay hardlinks. ``out`` is written sequentially (it may be a pipe).
    """
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, path, st in _walk(layer):
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == os.makedev(0, 0):
                head, _, base = rel.rpartition("/")
                name = f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base
                tar.addfile(_info(name, st, uid_shift, tarfile.REGTYPE))
            elif stat.S_ISDIR(mode):
                tar.addfile(_info(rel, st, uid_shift, tarfile.DIRTYPE, path))
                try:
                    opaque = os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
                except OSError:
                    opaque = False
                if opaque and rel != ".":
                    tar.addfile(_info(f"{rel}/{OPAQUE_MARKER}", st, uid_shift, tarfile.REGTYPE))
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if key in links:
                    info = _info(rel, st, uid_shift, tarfile.LNKTYPE)
                    info.linkname = links[key]
                    tar.addfile(info)
                    continue
                if st.st_nlink > 1:
                    links[key] = rel
                info = _info(rel, st, uid_shift, tarfile.REGTYPE, path)
                info.size = st.st_size
                # Not a FIFO or a link now, whatever the walk saw: never wait on one.
                with open(open_regular(path), "rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISLNK(mode):
                info = _info(rel, st, uid_shift, tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISFIFO(mode):
                tar.addfile(_info(rel, st, uid_shift, tarfile.FIFOTYPE))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info = _info(rel, st, uid_shift, kind)
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            # sockets have no tar representation: skipped
