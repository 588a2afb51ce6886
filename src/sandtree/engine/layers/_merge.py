"""Compaction: merge a run of overlay upper-format layers into one equivalent layer.

The result, stacked over whatever lies beneath ``layers[0]``, shows exactly the view of
the original stack. So whiteouts stay whiteouts (the base may still have the path), and a
directory that covers a file or a whiteout becomes opaque (the covered entry hid the base).
Regular files are hard-linked from the immutable source layers, not copied.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from sandtree.errors import InvalidRequestError

from ._writer import OPAQUE_XATTR

__all__ = ["layer_size", "merge_layers"]

# Overlay bookkeeping of a live upper (origin, impure, redirect) is only valid next to the
# layers it was created over; only the opaque mark carries meaning into a merged layer.
_OVERLAY_PREFIX = "trusted.overlay."


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _xattrs(path: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if not name.startswith(_OVERLAY_PREFIX):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def _remove(path: str, st: os.stat_result | None) -> None:
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _set_meta(path: str, st: os.stat_result, *, symlink: bool = False) -> None:
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, stat.S_IMODE(st.st_mode))  # after chown, which drops setuid bits
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _set_dir_meta(src: str, st: os.stat_result, dst: str, *, opaque: bool) -> None:
    """Give ``dst`` the owner, mode, xattrs and times of ``src``, plus the opaque mark."""
    wanted = _xattrs(src)
    if opaque:
        wanted[OPAQUE_XATTR] = b"y"
    for name in os.listxattr(dst, follow_symlinks=False):
        if name not in wanted:
            os.removexattr(dst, name, follow_symlinks=False)
    for name, value in wanted.items():
        os.setxattr(dst, name, value, follow_symlinks=False)
    _set_meta(dst, st)


def _copy_node(src: str, st: os.stat_result, dst: str) -> None:
    """Recreate a non-directory entry; regular files share the source inode."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        # Source on another filesystem: copy, which costs bytes but keeps the view.
        shutil.copyfile(src, dst, follow_symlinks=False)
        for name, value in _xattrs(src).items():
            os.setxattr(dst, name, value)
        _set_meta(dst, st)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
        _set_meta(dst, st, symlink=True)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, 0o600)
        _set_meta(dst, st)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # whiteouts, mostly
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        _set_meta(dst, st)
    # sockets cannot be recreated meaningfully and never belong in a layer: dropped


def _apply(src: str, dst: str, hidden: bool) -> None:
    """Lay the layer directory ``src`` over the merged directory ``dst``.

    ``hidden`` means ``dst`` is opaque or inside an opaque directory of the merged tree, so
    nothing beneath the merged layer shows through and whiteouts are unnecessary.
    """
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        target = os.path.join(dst, entry.name)
        old = _lstat(target)
        if _is_whiteout(st):
            _remove(target, old)
            if not hidden:
                _copy_node(entry.path, st, target)
        elif stat.S_ISDIR(st.st_mode):
            opaque = _is_opaque(entry.path)
            if old is not None and stat.S_ISDIR(old.st_mode) and not opaque:
                keep = _is_opaque(target)
                _apply(entry.path, target, hidden or keep)
                _set_dir_meta(entry.path, st, target, opaque=keep)
            else:
                # A directory over a file or whiteout of a lower merged layer starts afresh:
                # that entry hid the base, so the new directory must hide it too.
                opaque = opaque or (old is not None and not hidden)
                _remove(target, old)
                os.mkdir(target, 0o700)
                _apply(entry.path, target, hidden or opaque)
                _set_dir_meta(entry.path, st, target, opaque=opaque)
        else:
            _remove(target, old)
            _copy_node(entry.path, st, target)


def merge_layers(layers: list[Path], dest: Path) -> int:
    """Merge ``layers`` (bottom first, overlay upper format) into one layer at ``dest``.

    Stacked over the layers beneath ``layers[0]``, ``dest`` gives the same view as the
    stack ``layers``. ``dest`` must not exist or be empty, and should be on the same
    filesystem as the layers so regular files are hard links (else they are copied).

    Returns:
        The number of entries in the merged layer.

    Raises:
        InvalidRequestError: no layers, or ``dest`` is not empty.
    """
    if not layers:
        raise InvalidRequestError("merge_layers needs at least one layer")
    dest.mkdir(mode=0o700, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidRequestError(f"{dest} is not empty; merge into a new directory")
    for layer in layers:
        _apply(str(layer), str(dest), hidden=False)
        # The root of the topmost layer gives the root its attributes; it is never opaque.
        _set_dir_meta(str(layer), os.lstat(layer), str(dest), opaque=False)
    count = 0
    for _root, dirs, files in os.walk(dest):
        count += len(dirs) + len(files)
    return count


def layer_size(path: Path) -> int:
    """Apparent size in bytes of the regular files of a layer, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
