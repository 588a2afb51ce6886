"""Mounting image layer stacks with overlayfs.

Uses the new mount API (``fsopen``/``fsconfig``/``fsmount``/``move_mount``, kernel >= 6.8 for
``lowerdir+``) so the layer count is bounded only by the kernel's 500-layer stack limit and not
by the one-page option string of ``mount(2)``; falls back to ``mount(2)`` with short relative
paths where the new API is missing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "MAX_LOWER_LAYERS",
    "OverlayError",
    "bind_readonly",
    "legacy_max_lowers",
    "lowerdir_plus_supported",
    "mount_overlay",
    "syncfs",
    "unmount",
]

#: OVL_MAX_STACK: the kernel refuses more lower layers than this.
MAX_LOWER_LAYERS = 500
#: mount(2) copies at most one page of options, its NUL included.
_PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_AT_FDCWD = -100
_MNT_DETACH = 2

_new_api: bool | None = None


class OverlayError(OSError):
    """Mounting or unmounting an overlay failed."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OverlayError(err, f"{what}: {os.strerror(err)}")
    return ret


def _mount_new_api(
    lowers_top_first: Sequence[str],
    upper: str | None,
    work: str | None,
    target: str,
    *,
    readonly: bool,
    volatile: bool,
) -> None:
    fd = _check(_libc.syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC), "fsopen(overlay)")
    try:

        def set_string(key: bytes, value: str) -> None:
            _check(
                _libc.syscall(_SYS_FSCONFIG, fd, _FSCONFIG_SET_STRING, key, value.encode(), 0),
                f"fsconfig({key.decode()}={value})",
            )

        def set_flag(key: bytes) -> None:
            _check(
                _libc.syscall(_SYS_FSCONFIG, fd, _FSCONFIG_SET_FLAG, key, None, 0),
                f"fsconfig({key.decode()})",
            )

        for lower in lowers_top_first:
            set_string(b"lowerdir+", lower)
        if upper is not None and work is not None:
            set_string(b"upperdir", upper)
            set_string(b"workdir", work)
            if volatile:
                set_flag(b"volatile")
        # Portable layers: no metacopy/redirect xattrs that point into lower layers.
        set_string(b"redirect_dir", "off")
        set_string(b"metacopy", "off")
        set_string(b"index", "off")
        _check(
            _libc.syscall(_SYS_FSCONFIG, fd, _FSCONFIG_CMD_CREATE, None, None, 0),
            "fsconfig(create)",
        )
        attrs = _MOUNT_ATTR_RDONLY if readonly else 0
        mfd = _check(_libc.syscall(_SYS_FSMOUNT, fd, _FSMOUNT_CLOEXEC, attrs), "fsmount")
        try:
            _check(
                _libc.syscall(
                    _SYS_MOVE_MOUNT, mfd, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH
                ),
                f"move_mount({target})",
            )
        finally:
            os.close(mfd)
    finally:
        os.close(fd)


def _legacy_options(
    lowers_top_first: Sequence[str], upper: str | None, work: str | None, *, volatile: bool
) -> bytes:
    opts = ["lowerdir=" + ":".join(lowers_top_first)]
    if upper is not None and work is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
        if volatile:
            opts.append("volatile")
    opts += ["redirect_dir=off", "metacopy=off", "index=off"]
    return ",".join(opts).encode()


def _via_fd(base: int, common: str, path: Path) -> str:
    return _fd_path(base, os.path.relpath(os.path.abspath(path), common))


def _fd_path(fd: int, rel: str) -> str:
    return f"/proc/self/fd/{fd}/{rel}"


def legacy_max_lowers(*, lower: int, upper: int, work: int) -> int:
    """How many lower layers fit in ``mount(2)``'s one page of options beside an upper and a
    work dir (a writable, volatile mount: the longest option string a run uses), given the
    lengths of their paths below the directory they share: ``mount_overlay`` names each
    through a descriptor of that directory, whose number can reach this process's fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    prefix = len(_fd_path(max(soft - 1, 0), ""))
    lower, upper, work = lower + prefix, upper + prefix, work + prefix
    fixed = len(_legacy_options([""], "u" * upper, "w" * work, volatile=True))
    # n lowers add n * lower bytes and n - 1 colons to the one empty lower: fixed + n * lower
    # + n - 1 <= _PAGE - 1 (the NUL).
    return max(0, min(MAX_LOWER_LAYERS, (_PAGE - fixed) // (lower + 1)))


def lowerdir_plus_supported() -> bool:
    """Whether the kernel takes overlay layers one by one (``lowerdir+``, Linux >= 6.8),
    which bounds a stack only by ``MAX_LOWER_LAYERS``. Probed once, without mounting."""
    global _new_api
    if _new_api is None:
        fd = _libc.syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
        if fd < 0:
            _new_api = False
        else:
            try:

                def accepted(key: bytes, value: bytes) -> bool:
                    return bool(
                        _libc.syscall(_SYS_FSCONFIG, fd, _FSCONFIG_SET_STRING, key, value, 0) == 0
                    )

                # An overlay from before the fs_context API (Linux < 6.5: Debian 12's 6.1) takes
                # every key unchecked into a legacy option string, refused only at create; a key
                # no filesystem has tells the two apart.
                _new_api = accepted(b"lowerdir+", b"/") and not accepted(b"sandtree-no-such", b"x")
            finally:
                os.close(fd)
    return _new_api


def _mount_legacy(
    lowers_top_first: Sequence[str],
    upper: str | None,
    work: str | None,
    target: str,
    *,
    readonly: bool,
    volatile: bool,
) -> None:
    data = _legacy_options(lowers_top_first, upper, work, volatile=volatile)
    if len(data) >= _PAGE:
        raise OverlayError(
            errno.E2BIG, "overlay options exceed one page; this kernel lacks lowerdir+ support"
        )
    flags = 1 if readonly else 0  # MS_RDONLY
    _check(_libc.mount(b"overlay", target.encode(), b"overlay", flags, data), "mount(overlay)")


def mount_overlay(
    lowers_bottom_first: Sequence[Path],
    target: Path,
    *,
    upper: Path | None = None,
    work: Path | None = None,
    volatile: bool = False,
) -> None:
    """Mount the layers at ``target``; writable when ``upper`` and ``work`` are given.

    Raises:
        OverlayError: the stack is too deep or the kernel refused the mount.
    """
    global _new_api
    if not lowers_bottom_first:
        raise OverlayError(errno.EINVAL, "an overlay needs at least one lower layer")
    if len(lowers_bottom_first) > MAX_LOWER_LAYERS:
        raise OverlayError(
            errno.ELOOP, f"{len(lowers_bottom_first)} layers exceed the kernel's {MAX_LOWER_LAYERS}"
        )
    readonly = upper is None
    # The kernel shows the layer paths as given in every mountinfo that sees the mount, a
    # sandbox's own included: given through a descriptor of their common parent, they read
    # "/proc/self/fd/N/layers/<id>" instead of naming the host's data dir (and fit more
    # layers in the legacy path's one page of options).
    paths = [*lowers_bottom_first, *(p for p in (upper, work) if p is not None)]
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    base = os.open(common, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        lowers = [_via_fd(base, common, p) for p in reversed(lowers_bottom_first)]
        up = _via_fd(base, common, upper) if upper is not None else None
        wk = _via_fd(base, common, work) if work is not None else None
        if _new_api is not False:
            try:
                _mount_new_api(lowers, up, wk, str(target), readonly=readonly, volatile=volatile)
                _new_api = True
                return
            except OverlayError as exc:
                if _new_api or exc.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise
                _new_api = False
        _mount_legacy(lowers, up, wk, str(target), readonly=readonly, volatile=volatile)
    finally:
        os.close(base)


def bind_readonly(source: Path, target: Path) -> None:
    """Bind ``source`` at ``target`` read-only (a one-layer image's view: overlayfs wants two
    lower layers for a mount without an upper)."""
    ms_bind, ms_rdonly, ms_remount = 0x1000, 0x1, 0x20
    _check(_libc.mount(str(source).encode(), str(target).encode(), None, ms_bind, None), "bind")
    flags = ms_bind | ms_remount | ms_rdonly
    if _libc.mount(None, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        _libc.umount2(str(target).encode(), _MNT_DETACH)
        raise OverlayError(err, f"remount {target} read-only: {os.strerror(err)}")


def unmount(target: Path, *, lazy: bool = False) -> None:
    """Unmount ``target``; a target that is not mounted is not an error."""
    ret = _libc.umount2(str(target).encode(), _MNT_DETACH if lazy else 0)
    if ret < 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise OverlayError(err, f"umount({target}): {os.strerror(err)}")


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check(_libc.syncfs(fd), f"syncfs({path})")
    finally:
        os.close(fd)
