"""Layers on disk: one directory per layer in overlayfs upper format, under ``<root>/layers``.

A run gets ``<root>/runs/<id>/{upper,work,merged}`` on the same filesystem, so committing a
run is a ``rename`` of its upper dir into ``layers/`` after its new entries are fsynced: the
cost depends on what the run wrote, never on the image's size or depth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import stat
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from sandtree._datadir import private_dir
from sandtree.engine.layers._ids import NOBODY, in_host_range
from sandtree.engine.layers._overlay import (
    MAX_LOWER_LAYERS,
    bind_readonly,
    legacy_max_lowers,
    lowerdir_plus_supported,
    mount_overlay,
    syncfs,
    unmount,
)
from sandtree.engine.layers._paths import (
    SpecialFileError,
    lstat_beneath,
    open_regular,
    walk_tree,
)
from sandtree.engine.layers._usage import LayerUsage, layer_usage

__all__ = ["LayerStore", "RunDirs"]

logger = logging.getLogger(__name__)

_OPAQUE = "trusted.overlay.opaque"


@dataclasses.dataclass(frozen=True)
class RunDirs:
    root: Path
    layers: tuple[str, ...]
    #: Where the overlay is mounted: outside the data dir, see ``LayerStore``.
    merged: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"


class LayerStore:
    """The on-disk half of the image store (the metadata half is ``MetadataStore``)."""

    def __init__(self, root: Path, *, uid_shift: int, max_views: int = 32) -> None:
        self.root = root
        self.uid_shift = uid_shift
        self.layers_dir = root / "layers"
        self.runs_dir = root / "runs"
        self.tmp_dir = root / "tmp"
        # Mount points live under /run: a sandbox's root (a shifted uid) must be able to walk
        # the path to its rootfs, and data dirs often sit under 0700 homes.
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        self.mounts_dir = Path("/run/sandtree") / key
        self.views_dir = self.mounts_dir / "views"
        for d in (self.layers_dir, self.runs_dir, self.tmp_dir, self.views_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Runs' bundles hold env values and their uppers the runs' files (setuid ones too):
        # no host user walks into the store.
        for d in (self.root, self.runs_dir):
            private_dir(d)
        # /proc/mounts shows every run's rootfs to every local account, and a rootfs holds
        # setuid files of the sandbox's (shifted) ids: past the shared 0711 /run/sandtree, only
        # root and the sandbox's root group (host gid ``uid_shift``, which crun walks the path
        # as) may enter; inspection views are the server's alone.
        os.chmod(self.mounts_dir.parent, 0o711)
        os.chown(self.mounts_dir, 0, uid_shift)
        os.chmod(self.mounts_dir, 0o710)
        os.chmod(self.views_dir, 0o700)
        # Layers keep images' setuid files (as the OCI spec and containerd do); host users
        # have no business walking into them.
        for d in (self.layers_dir, self.tmp_dir):
            os.chmod(d, 0o700)
        self._views: OrderedDict[tuple[str, ...], tuple[Path, int]] = OrderedDict()
        self._views_lock = threading.Lock()
        self._max_views = max_views

    def path(self, layer_id: str) -> Path:
        return self.layers_dir / layer_id

    def max_lowers(self) -> int:
        """The deepest stack of lower layers a run can mount on this kernel: the kernel's own
        limit with ``lowerdir+``, else what fits in one page of ``mount(2)`` options, from the
        lengths this store's paths really have (a layer id, an operation's run dir)."""
        if lowerdir_plus_supported():
            return MAX_LOWER_LAYERS
        layer = self.path(uuid.uuid4().hex).relative_to(self.root)
        run = RunDirs(self.runs_dir / str(uuid.uuid4()), (), self.mounts_dir)
        return legacy_max_lowers(
            lower=len(str(layer)),
            upper=len(str(run.upper.relative_to(self.root))),
            work=len(str(run.work.relative_to(self.root))),
        )

    def paths(self, layer_ids: Sequence[str]) -> list[Path]:
        return [self.layers_dir / layer for layer in layer_ids]

    # -- runs -----------------------------------------------------------------------------------

    def prepare_run(self, run_id: str, layer_ids: Sequence[str]) -> RunDirs:
        """Mount a writable overlay of ``layer_ids`` for a run at ``RunDirs.merged``."""
        dirs = RunDirs(self.runs_dir / run_id, tuple(layer_ids), self.mounts_dir / run_id)
        dirs.root.mkdir(mode=0o700)
        for d in (dirs.upper, dirs.work, dirs.merged, dirs.bundle):
            d.mkdir()
        os.chown(dirs.upper, self.uid_shift, self.uid_shift)
        # volatile: the unmount skips syncing the whole filesystem (4 ms instead of ~40 ms);
        # a commit fsyncs exactly the entries the run wrote instead.
        mount_overlay(self.paths(layer_ids), dirs.merged, upper=dirs.upper, work=dirs.work,
                      volatile=True)  # fmt: skip
        return dirs

    def release_run(self, dirs: RunDirs) -> None:
        unmount(dirs.merged)

    def upper_usage(self, dirs: RunDirs) -> LayerUsage:
        """What the run's upper dir costs so far: every entry's data and inode (``_usage``)."""
        return layer_usage(dirs.upper)

    def has_changes(self, dirs: RunDirs) -> bool:
        """True when the upper holds anything but copies of directories the image has."""
        lowers: list[int] = []
        try:
            for layer in reversed(self.paths(dirs.layers)):
                lowers.append(os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            # walk_tree: the upper is walked while the sandbox may still write to it.
            for rel, entry in walk_tree(dirs.upper):
                if not stat.S_ISDIR(entry.st_mode):
                    return True
                if _is_opaque(dirs.upper / rel) or not _same_dir_in_stack(lowers, rel, entry):
                    return True
            return False
        finally:
            for fd in lowers:
                os.close(fd)

    def commit_run(self, dirs: RunDirs) -> tuple[str, int]:
        """Turn a finished run's upper dir into a new layer; returns ``(layer_id, bytes)``.

        An entry whose host owner no sandbox id maps to becomes nobody without setuid/setgid
        bits first (see ``_own_in_range``).
        """
        entries = list(walk_tree(dirs.upper))
        _own_in_range(dirs.upper, entries, self.uid_shift)
        size = _fsync_tree(dirs.upper, entries=entries)
        layer_id = uuid.uuid4().hex
        os.rename(dirs.upper, self.path(layer_id))
        _fsync_dir(self.layers_dir)
        return layer_id, size

    def discard_run(self, dirs: RunDirs) -> None:
        unmount(dirs.merged, lazy=True)
        with contextlib.suppress(OSError):
            dirs.merged.rmdir()
        shutil.rmtree(dirs.root, ignore_errors=True)

    # -- layers ---------------------------------------------------------------------------------

    def new_staging_dir(self) -> Path:
        path = self.tmp_dir / uuid.uuid4().hex
        path.mkdir()
        return path

    def adopt(self, staging: Path, *, linked: bool = False) -> tuple[str, int]:
        """Move a fully written staging dir (e.g. an imported layer) into the store.

        ``linked``: its files are hard links to files already in the store (a compaction),
        so only the new directory entries need flushing, not the data.
        """
        size = _fsync_tree(staging, files=not linked)
        layer_id = uuid.uuid4().hex
        os.rename(staging, self.path(layer_id))
        _fsync_dir(self.layers_dir)
        return layer_id, size

    def delete(self, layer_id: str) -> None:
        target = self.path(layer_id)
        if target.exists():
            # Rename first so a half-deleted layer never sits under its id.
            doomed = self.tmp_dir / f"del-{layer_id}"
            os.rename(target, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def sweep(self, known_layers: set[str]) -> list[str]:
        """After a restart: drop runs, staging dirs and layer dirs the metadata never adopted."""
        self.unmount_views()
        for mount in list(self.mounts_dir.iterdir()):
            if mount != self.views_dir:
                unmount(mount, lazy=True)
                with contextlib.suppress(OSError):
                    mount.rmdir()
        for run in list(self.runs_dir.iterdir()):
            shutil.rmtree(run, ignore_errors=True)
        for tmp in list(self.tmp_dir.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
        orphans = [p.name for p in self.layers_dir.iterdir() if p.name not in known_layers]
        for name in orphans:
            shutil.rmtree(self.layers_dir / name, ignore_errors=True)
        return orphans

    # -- read-only views for inspection ---------------------------------------------------------

    @contextlib.contextmanager
    def view(self, layer_ids: Sequence[str]) -> Iterator[Path]:
        """A read-only overlay of the stack, mounted once and kept while it is used often."""
        key = tuple(layer_ids)
        with self._views_lock:
            if key in self._views:
                path, users = self._views.pop(key)
            else:
                path = self.views_dir / uuid.uuid4().hex
                path.mkdir()
                if len(key) == 1:
                    bind_readonly(self.path(key[0]), path)
                else:
                    mount_overlay(self.paths(key), path)
                users = 0
            self._views[key] = (path, users + 1)
            self._evict_views()
        try:
            yield path
        finally:
            with self._views_lock:
                if key in self._views:
                    p, n = self._views[key]
                    self._views[key] = (p, n - 1)
                self._evict_views()

    def _evict_views(self) -> None:
        idle = [k for k, (_, n) in self._views.items() if n == 0]
        while len(self._views) > self._max_views and idle:
            key = idle.pop(0)
            path, _ = self._views.pop(key)
            unmount(path, lazy=True)
            with contextlib.suppress(OSError):
                path.rmdir()

    def forget_views(self, layer_ids: Sequence[str]) -> None:
        """Unmount the view of a stack that is about to change (compaction, deletion)."""
        with self._views_lock:
            entry = self._views.get(tuple(layer_ids))
            if entry is not None and entry[1] == 0:
                del self._views[tuple(layer_ids)]
                unmount(entry[0], lazy=True)
                with contextlib.suppress(OSError):
                    entry[0].rmdir()

    def close(self) -> None:
        """Unmount every view and remove this store's mount directories under /run."""
        self.unmount_views()
        for d in (self.views_dir, self.mounts_dir):
            with contextlib.suppress(OSError):
                d.rmdir()

    def unmount_views(self) -> None:
        with self._views_lock:
            for path, _ in self._views.values():
                unmount(path, lazy=True)
            self._views.clear()
        for leftover in list(self.views_dir.iterdir()):
            unmount(leftover, lazy=True)
            with contextlib.suppress(OSError):
                leftover.rmdir()


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _same_dir_in_stack(lowers_top_first: Sequence[int], rel: str, upper: os.stat_result) -> bool:
    """True when the image already has this directory with the same mode and owner.

    ``lowers_top_first`` are fds of the layer roots. A layer where a parent of ``rel`` is a
    symlink or a file hides the layers beneath: the directory is new (and a symlink in a
    layer is never followed to the host).
    """
    for layer in lowers_top_first:
        try:
            st = lstat_beneath(layer, rel)
        except FileNotFoundError:
            continue
        except OSError:
            return False
        return (st.st_mode, st.st_uid, st.st_gid) == (upper.st_mode, upper.st_uid, upper.st_gid)
    return False


#: Past this many entries one syncfs() (the whole filesystem) beats an fsync per entry: an
#: imported Debian minbase has ~6,700 entries, and fsyncing each took 2-8 s on this host.
_SYNCFS_ENTRIES = 256


def _own_in_range(top: Path, entries: Sequence[tuple[str, os.stat_result]], shift: int) -> None:
    """Give nobody (and no setuid/setgid bit) what a finished run left owned by a host id
    outside ``shift .. shift + 65535``.

    The sandbox's user namespace makes such owners impossible (a chown to an unmapped id is
    EINVAL on crun and gVisor alike); this is the check that does not trust it, so that a
    misconfigured runtime cannot turn a run into a host-root setuid file in a layer.
    """
    for rel, st in entries:
        uid, gid = st.st_uid, st.st_gid
        if in_host_range(uid, shift) and in_host_range(gid, shift):
            continue
        path = top / rel  # the run is over: nothing swaps a parent for a symlink any more
        logger.warning("run left %s owned by host %d:%d; made it nobody's", path, uid, gid)
        nobody = shift + NOBODY
        os.chown(path, uid if in_host_range(uid, shift) else nobody,
                 gid if in_host_range(gid, shift) else nobody, follow_symlinks=False)  # fmt: skip
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))


def _fsync_tree(
    top: Path, *, files: bool = True, entries: Sequence[tuple[str, os.stat_result]] | None = None
) -> int:
    """Make everything under ``top`` durable; returns the bytes of its regular files.

    Small trees (a run's changes) fsync each directory (and file, with ``files``); large ones
    (an imported layer) take one syncfs() of the filesystem instead. ``entries``: the walk
    of ``top`` when the caller has made it already.
    """
    if entries is None:
        entries = list(walk_tree(top))
    total = sum(st.st_size for _, st in entries if stat.S_ISREG(st.st_mode))
    if len(entries) > _SYNCFS_ENTRIES:
        syncfs(top)
        return total
    for rel, st in entries:
        path = top / rel
        if stat.S_ISREG(st.st_mode):
            if not files:
                continue
            try:
                fd = open_regular(path)
            except SpecialFileError:
                continue  # swapped for a FIFO or a link since the walk: no data to flush
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif stat.S_ISDIR(st.st_mode):
            _fsync_dir(path)
    _fsync_dir(top)
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
