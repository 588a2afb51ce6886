"""Host checks of the data dir's filesystem: room, ``d_type``, xattrs and a real overlay.

A run's writable layer is an overlay upper dir inside the data dir, so that filesystem must
give ``d_type`` in readdir and keep ``trusted.*`` xattrs (whiteouts and opaque directories);
the probes make a scratch directory there, try each of those and a volatile overlay mount with
a whiteout and an opaque directory in it, and remove it again. Where the data dir does not
exist yet, its nearest existing parent is probed: the filesystem it would be made on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from sandtree.config import Settings
from sandtree.engine.layers._overlay import lowerdir_plus_supported, mount_overlay, unmount
from sandtree.engine.runtime._doctor import Finding, HostView

__all__ = ["check_overlay_layers", "data_dir_checks", "filesystem_type", "has_d_type", "probe_base"]

#: Below this much free space under the data dir, ``disk`` warns: one run's writable layer
#: may grow to ``max_layer_bytes`` (12 GiB by default), and every kept layer stays.
LOW_DISK_BYTES = 5 * 1024**3
_GIB = 1024**3

#: statfs(2) ``f_type`` magic numbers (linux/magic.h) of the filesystems people put data on.
_FS_NAMES = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x794C7630: "overlay",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x4D44: "vfat",
    0x01021997: "9p",
    0x00C36400: "ceph",
    0x73717368: "squashfs",
}

_libc = ctypes.CDLL(None, use_errno=True)
_DT_DIR = 4


class _Dirent(ctypes.Structure):
    # glibc's struct dirent on 64-bit Linux (what readdir returns).
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = (ctypes.c_char_p,)
_libc.readdir.restype = ctypes.POINTER(_Dirent)
_libc.readdir.argtypes = (ctypes.c_void_p,)
_libc.closedir.argtypes = (ctypes.c_void_p,)


def probe_base(data_dir: Path) -> Path:
    """The data dir, or the nearest parent of it that exists."""
    path = data_dir.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def filesystem_type(path: Path) -> str:
    """The name of the filesystem holding ``path`` (``ext4``, ``tmpfs``…), from statfs(2)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes; f_type comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs({path}): {os.strerror(err)}")
    magic = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return _FS_NAMES.get(magic, f"0x{magic:x}")


def has_d_type(directory: Path) -> bool:
    """Whether readdir in ``directory`` reports a subdirectory as DT_DIR, not DT_UNKNOWN
    (Python's scandir hides which: it falls back to lstat)."""
    sub = directory / "d_type-probe"
    sub.mkdir()
    handle = _libc.opendir(os.fsencode(directory))
    if not handle:
        err = ctypes.get_errno()
        raise OSError(err, f"opendir({directory}): {os.strerror(err)}")
    try:
        while entry := _libc.readdir(handle):
            if entry.contents.d_name == sub.name.encode():
                return bool(entry.contents.d_type == _DT_DIR)
        return False
    finally:
        _libc.closedir(handle)


def _xattr_works(path: Path, name: str) -> str | None:
    """None when ``name`` can be set and read back on ``path``, else why not."""
    try:
        os.setxattr(path, name, b"y")
        if os.getxattr(path, name) != b"y":
            return "it reads back changed"
        os.removexattr(path, name)
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    return None


def _overlay_probe(scratch: Path) -> None:
    """Mount a volatile overlay with its upper in ``scratch``, delete a file and replace a
    directory through it; raise OSError unless the upper then holds a whiteout and an opaque
    directory, as a kept layer must."""
    lower, upper, work, merged = (scratch / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower / "dir", upper, work, merged):
        d.mkdir(parents=True)
    (lower / "file").write_bytes(b"lower\n")
    (lower / "dir" / "inner").write_bytes(b"lower\n")
    mount_overlay([lower], merged, upper=upper, work=work, volatile=True)
    try:
        (merged / "file").unlink()
        shutil.rmtree(merged / "dir")
        (merged / "dir").mkdir()
        (merged / "new").write_bytes(b"upper\n")
    finally:
        unmount(merged)
    whiteout = os.lstat(upper / "file")
    if not (stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0):
        raise OSError(errno.EIO, "a deleted file left no whiteout in the upper dir")
    if os.getxattr(upper / "dir", "trusted.overlay.opaque") != b"y":
        raise OSError(errno.EIO, "a replaced directory is not marked opaque in the upper dir")


def _root_only(name: str, why: str) -> Finding:
    return Finding(
        name=name, status="warn", detail=f"not checked: {why} needs root",
        fix="run sandtree doctor as root",
    )  # fmt: skip


def check_overlay_layers(host: HostView) -> Finding:
    """Whether stacks mount through ``lowerdir+`` or the legacy one-page ``mount(2)`` path."""
    if host.uid() != 0:
        return _root_only("overlay-layers", "probing the mount API")
    if lowerdir_plus_supported():
        return Finding(
            name="overlay-layers", status="ok",
            detail="lowerdir+ (new mount API): stacks of up to 500 layers",
        )  # fmt: skip
    return Finding(
        name="overlay-layers", status="ok",
        detail="legacy mount(2) path (no lowerdir+ before Linux 6.8): stacks are compacted "
        "to fit one page of mount options",
    )  # fmt: skip


def _disk(base: Path) -> Finding:
    try:
        st = os.statvfs(base)
    except OSError as exc:
        return Finding(name="disk", status="warn", detail=f"statvfs({base}): {exc}",
                       required=False)  # fmt: skip
    free = st.f_bavail * st.f_frsize
    detail = f"{free / _GIB:.1f} GiB free under {base}"
    if free < LOW_DISK_BYTES:
        return Finding(
            name="disk", status="warn",
            detail=f"{detail}, under {LOW_DISK_BYTES // _GIB} GiB: runs that write much fail",
            fix="free space there, or point --data-dir (SANDTREE_DATA_DIR) at a larger disk",
            required=False,
        )  # fmt: skip
    return Finding(name="disk", status="ok", detail=detail, required=False)


def data_dir_checks(host: HostView, settings: Settings, *, probe: bool = True) -> list[Finding]:
    """``disk``, ``filesystem`` (type and ``d_type``), ``xattrs`` and
    ``overlay-upper`` for the data dir of ``settings``."""
    base = probe_base(settings.data_dir)
    move = "put the data dir on ext4, xfs (ftype=1) or btrfs: --data-dir DIR or SANDTREE_DATA_DIR"
    findings = [_disk(base)]
    try:
        kind = filesystem_type(base)
    except OSError as exc:
        kind = f"unknown ({exc})"
    if not probe:
        findings.append(Finding(name="filesystem", status="ok", detail=f"{base} is on {kind}"))
        return findings
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".sandtree-doctor-", dir=base))
    except OSError as exc:
        findings.append(Finding(
            name="filesystem", status="fail",
            detail=f"cannot write a probe in {base} ({kind}): {exc}",
            fix=f"make {base} writable by the server, or {move}",
        ))  # fmt: skip
        return findings
    try:
        findings += _probes(host, scratch, base, kind, move)
    finally:
        with contextlib.suppress(OSError):
            unmount(scratch / "merged", lazy=True)  # only if the probe died while mounted
        shutil.rmtree(scratch, ignore_errors=True)
    return findings


def _probes(host: HostView, scratch: Path, base: Path, kind: str, move: str) -> list[Finding]:
    findings: list[Finding] = []
    try:
        d_type = has_d_type(scratch)
    except OSError as exc:
        d_type, kind = False, f"{kind}, readdir failed: {exc}"
    if d_type:
        findings.append(Finding(name="filesystem", status="ok",
                                detail=f"{base} is on {kind}, with d_type"))  # fmt: skip
    else:
        findings.append(Finding(
            name="filesystem", status="fail",
            detail=f"{base} is on {kind}, whose readdir gives no d_type (overlay needs it)",
            fix=move,
        ))  # fmt: skip
    if host.uid() != 0:
        return [*findings, _root_only("xattrs", "trusted.* xattrs"),
                _root_only("overlay-upper", "mounting")]  # fmt: skip
    probe_file = scratch / "xattr-probe"
    probe_file.write_bytes(b"")
    trusted = _xattr_works(probe_file, "trusted.sandtree.probe")
    user = _xattr_works(probe_file, "user.sandtree.probe")
    users = "user.* too" if user is None else f"not user.* ({user})"
    if trusted is None:
        findings.append(Finding(name="xattrs", status="ok",
                                detail=f"trusted.* xattrs work on {kind}; {users}"))  # fmt: skip
    else:
        findings.append(Finding(
            name="xattrs", status="fail",
            detail=f"{kind} at {base} keeps no trusted.* xattrs ({trusted}): overlay cannot "
            "mark deleted or replaced directories there",
            fix=move,
        ))  # fmt: skip
        return findings  # the mount below would only repeat why
    try:
        _overlay_probe(scratch / "overlay")
    except OSError as exc:
        findings.append(Finding(
            name="overlay-upper", status="fail",
            detail=f"a volatile overlay with its upper on {kind} at {base} failed: {exc}",
            fix=move,
        ))  # fmt: skip
    else:
        findings.append(Finding(
            name="overlay-upper", status="ok",
            detail=f"a volatile overlay upper on {kind} keeps whiteouts and opaque directories",
        ))  # fmt: skip
    return findings
