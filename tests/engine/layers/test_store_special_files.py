"""The layer store's walks of a run's upper dir and of its layers: special files are entries,
never opened for reading, and symlinks (in the upper or in a lower layer) never lead out."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandtree.engine.layers._store import LayerStore, RunDirs

SHIFT = 100000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LayerStore]:
    layers = LayerStore(tmp_path / "store", uid_shift=SHIFT)
    yield layers
    layers.close()


def _layer(store: LayerStore) -> tuple[str, Path]:
    layer_id = uuid.uuid4().hex
    path = store.path(layer_id)
    path.mkdir()
    return layer_id, path


def _run(store: LayerStore, layers: tuple[str, ...]) -> RunDirs:
    """Run dirs whose upper is filled by hand (nothing mounted: the walks read the upper)."""
    root = store.runs_dir / uuid.uuid4().hex
    dirs = RunDirs(root, layers, store.mounts_dir / root.name)
    dirs.upper.mkdir(parents=True)
    return dirs


def test_a_new_directory_under_a_lower_layers_symlink_to_the_host_counts_as_a_change(
    tmp_path: Path, store: LayerStore
) -> None:
    # The host has a directory /host/b just like the one the run made at /a/b; the bottom
    # layer's /a is a symlink there. Looking /a/b up through it would say "nothing new".
    host = tmp_path / "host"
    (host / "b").mkdir(parents=True)
    bottom_id, bottom = _layer(store)
    (bottom / "a").symlink_to(host)
    top_id, top = _layer(store)
    (top / "a").mkdir()
    dirs = _run(store, (bottom_id, top_id))
    (dirs.upper / "a" / "b").mkdir(parents=True)
    for path in (dirs.upper / "a", dirs.upper / "a" / "b"):
        os.chmod(path, os.stat(top / "a").st_mode)
        st = os.stat(top / "a")
        os.chown(path, st.st_uid, st.st_gid)
    os.chmod(host / "b", os.stat(dirs.upper / "a" / "b").st_mode)

    assert store.has_changes(dirs)


def test_a_fifo_in_the_upper_is_committed_as_an_entry_without_being_opened(
    store: LayerStore,
) -> None:
    dirs = _run(store, ())
    os.mkfifo(dirs.upper / "fifo")  # opening it for reading would wait for a writer
    (dirs.upper / "file").write_bytes(b"abc")

    assert store.has_changes(dirs)
    assert store.upper_usage(dirs).entries == 2  # the FIFO is counted, not opened
    layer_id, size = store.commit_run(dirs)

    assert size == 3
    assert sorted(p.name for p in store.path(layer_id).iterdir()) == ["fifo", "file"]
