"""The layer store keeps host ids to the sandbox's range and its mounts out of other local
accounts' reach: a committed run holds only shifted owners, a run's rootfs mount point is
walkable by root and the sandbox's root group only."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandtree.engine.layers._store import LayerStore, RunDirs

SHIFT = 100000
NOBODY = SHIFT + 65534


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LayerStore]:
    layers = LayerStore(tmp_path / "store", uid_shift=SHIFT)
    yield layers
    layers.close()


def _run(store: LayerStore) -> RunDirs:
    """Run dirs whose upper is filled by hand, as a runtime that mapped no ids would."""
    root = store.runs_dir / uuid.uuid4().hex
    dirs = RunDirs(root, (), store.mounts_dir / root.name)
    dirs.upper.mkdir(parents=True)
    os.chown(dirs.upper, SHIFT, SHIFT)
    return dirs


def _file(path: Path, uid: int, gid: int, mode: int) -> None:
    path.write_bytes(b"#!/bin/sh\n")
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_a_committed_run_never_keeps_a_setuid_file_owned_by_a_host_id_outside_the_sandbox(
    store: LayerStore,
) -> None:
    dirs = _run(store)
    (dirs.upper / "bin").mkdir()
    os.chown(dirs.upper / "bin", 0, 0)
    _file(dirs.upper / "bin" / "rootme", 0, 0, 0o6755)
    _file(dirs.upper / "gid0", SHIFT + 7, 0, 0o2755)
    _file(dirs.upper / "huge", 2**32 - 2, SHIFT, 0o4755)
    (dirs.upper / "link").symlink_to("bin/rootme")
    os.chown(dirs.upper / "link", 0, 0, follow_symlinks=False)

    layer_id, _ = store.commit_run(dirs)

    layer = store.path(layer_id)
    assert _owner(layer / "bin")[:2] == (NOBODY, NOBODY)
    assert _owner(layer / "bin" / "rootme") == (NOBODY, NOBODY, 0o755)
    assert _owner(layer / "gid0") == (SHIFT + 7, NOBODY, 0o755)
    assert _owner(layer / "huge") == (NOBODY, SHIFT, 0o755)
    assert _owner(layer / "link")[:2] == (NOBODY, NOBODY)


def test_a_committed_run_keeps_owners_and_setuid_bits_inside_the_sandbox_range(
    store: LayerStore,
) -> None:
    dirs = _run(store)
    _file(dirs.upper / "su", SHIFT, SHIFT, 0o4755)
    _file(dirs.upper / "top", SHIFT + 65535, SHIFT + 65535, 0o6755)

    layer_id, size = store.commit_run(dirs)

    layer = store.path(layer_id)
    assert _owner(layer / "su") == (SHIFT, SHIFT, 0o4755)
    assert _owner(layer / "top") == (SHIFT + 65535, SHIFT + 65535, 0o6755)
    assert size == 2 * len(b"#!/bin/sh\n")


def test_run_mount_points_are_walkable_only_by_root_and_the_sandboxs_root_group(
    store: LayerStore,
) -> None:
    # /proc/mounts shows every run's rootfs path to every local account.
    mounts = os.stat(store.mounts_dir)
    views = os.stat(store.views_dir)

    assert (mounts.st_uid, mounts.st_gid, stat.S_IMODE(mounts.st_mode)) == (0, SHIFT, 0o710)
    assert (views.st_uid, stat.S_IMODE(views.st_mode)) == (0, 0o700)


def test_mount_points_left_open_by_an_older_server_are_closed_on_start(tmp_path: Path) -> None:
    first = LayerStore(tmp_path / "store", uid_shift=SHIFT)
    for d in (first.mounts_dir, first.views_dir):  # as made by the umask, before this fix
        os.chown(d, 0, 0)
        os.chmod(d, 0o755)

    again = LayerStore(tmp_path / "store", uid_shift=SHIFT)  # the next start, same dirs
    try:
        assert stat.S_IMODE(os.stat(again.mounts_dir).st_mode) == 0o710
        assert os.stat(again.mounts_dir).st_gid == SHIFT
        assert stat.S_IMODE(os.stat(again.views_dir).st_mode) == 0o700
    finally:
        again.close()
