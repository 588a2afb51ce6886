"""Directory states: a synced tree of uploaded files, saved once and named by id in runs.

A state becomes a layer the first time a run uses it, so runs mount the tree instead of
copying every file. Files a state shares with the namespace's previous state layer (same
path, content, mode and owner) are hard links into that layer, not copies: syncing a
10,000-file project after editing one file makes a layer of one new file and links.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from sandtree.engine._clock import now_iso
from sandtree.engine._files import BlobStore
from sandtree.engine.layers._ids import check_sandbox_id, sandbox_owner
from sandtree.engine.layers._paths import (
    make_parents_in_root,
    open_root,
    split_components,
    write_file_in_root,
)
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import DirectoryState, ImageRecord, PlacedFile, RunSpec
from sandtree.errors import FileNotFoundInStoreError, LimitExceededError, NotFoundError

__all__ = [
    "StateLayers",
    "build_state_layer",
    "check_owners",
    "create_directory_state",
    "get_directory_state",
]

_MAX_STATE_FILES = 200_000


def create_directory_state(
    store: MetadataStore, files: Sequence[PlacedFile], *, namespace: str
) -> DirectoryState:
    """Save ``files`` as a directory state of ``namespace``; each must be uploaded there."""
    if len(files) > _MAX_STATE_FILES:
        raise LimitExceededError(
            f"a directory state holds at most {_MAX_STATE_FILES} files, not {len(files)}; "
            "sync a smaller tree or exclude generated files"
        )
    check_owners(files)
    records = store.get_files(f.uuid for f in files)
    for placed in files:
        record = records.get(placed.uuid)
        if record is None or record.namespace != namespace:
            raise FileNotFoundInStoreError(
                f"file {placed.uuid} for {placed.path} was not uploaded; upload it first"
            )
    created = now_iso()
    state_id = store.add_directory_state(namespace, files, created)
    return DirectoryState(id=state_id, namespace=namespace, created_at=created, files=tuple(files))


def check_owners(files: Sequence[PlacedFile]) -> None:
    """Refuse placed files whose owner is not an id the sandbox has (``0..65535``): shifted,
    such an id would be a host id, e.g. host root for ``-100000``."""
    for placed in files:
        check_sandbox_id(placed.uid, f"files[{placed.path!r}].uid")
        check_sandbox_id(placed.gid, f"files[{placed.path!r}].gid")


def get_directory_state(store: MetadataStore, state_id: int, *, namespace: str) -> DirectoryState:
    found = store.get_directory_state(state_id)
    if found is None or found[0] != namespace:
        raise NotFoundError(
            f"directory state {state_id} does not exist; sync the directory again to get one"
        )
    return DirectoryState(
        id=state_id, namespace=found[0], created_at=found[1], files=tuple(found[2])
    )


class StateLayers:
    """Directory states as layers, made on first use: runs then mount a state's files
    instead of copying thousands of them each time."""

    def __init__(self, store: MetadataStore, layers: LayerStore, blobs: BlobStore) -> None:
        self._store, self._layers, self._blobs = store, layers, blobs
        self._locks: dict[int, asyncio.Lock] = {}

    async def layer(self, state_id: int, namespace: str) -> str:
        """The layer of state ``state_id`` (of ``namespace``), making it if needed."""
        async with self._locks.setdefault(state_id, asyncio.Lock()):
            layer = self._store.directory_state_layer(state_id)
            if layer is None or not self._layers.path(layer).is_dir():
                state = get_directory_state(self._store, state_id, namespace=namespace)
                previous = self._previous(state)
                layer = await asyncio.to_thread(
                    build_state_layer, self._store, self._layers, self._blobs, state, previous
                )
            return layer

    async def place(self, spec: RunSpec, image: ImageRecord, namespace: str) -> RunSpec:
        """``spec`` with its directory state placed over ``image``: as a layer on top, or
        as copied files when the image already holds that layer (a kept run made with the
        same state): overlayfs refuses a layer twice in one stack."""
        if spec.directory_state is None:
            return spec
        layer = await self.layer(spec.directory_state, namespace)
        if layer not in image.layers:
            return dataclasses.replace(spec, lower_layers=(layer,))
        if image.layers[-1] == layer:
            return spec  # the files are on top already, unchanged since
        state = get_directory_state(self._store, spec.directory_state, namespace=namespace)
        by_path = {f.path: f for f in state.files}
        by_path.update((f.path, f) for f in spec.files)  # the request's own files win
        return dataclasses.replace(spec, files=tuple(by_path.values()))

    def _previous(self, state: DirectoryState) -> tuple[DirectoryState, Path] | None:
        """The namespace's latest other state that has a layer on disk, to link files from."""
        found = self._store.latest_state_layer(state.namespace, exclude=state.id)
        if found is None:
            return None
        state_id, layer = found
        root = self._layers.path(layer)
        if not root.is_dir():
            return None
        return get_directory_state(self._store, state_id, namespace=state.namespace), root


def _link_in_root(staging: Path, path: str, source: Path, *, uid: int, gid: int) -> bool:
    """Hard-link ``source`` (a file of an earlier state layer) at ``path`` in ``staging``."""
    try:
        rootfd = open_root(staging)
        try:
            parent = make_parents_in_root(rootfd, path, uid=uid, gid=gid)
            try:
                os.link(source, split_components(path)[-1], dst_dir_fd=parent,
                        follow_symlinks=False)  # fmt: skip
            finally:
                os.close(parent)
        finally:
            os.close(rootfd)
    except OSError:
        return False  # copied instead
    return True


def _same_file(f: PlacedFile) -> tuple[str, str, int, int, int]:
    """What must match for a file of an earlier state layer to be linked, not copied."""
    return (f.path, f.uuid, f.mode, f.uid, f.gid)


def build_state_layer(
    store: MetadataStore,
    layers: LayerStore,
    blobs: BlobStore,
    state: DirectoryState,
    previous: tuple[DirectoryState, Path] | None = None,
) -> str:
    """Write a directory state's files into a new layer (blocking); returns its id.

    Files identical to one in ``previous`` (a state and its layer root) are linked from it.
    """
    staging = layers.new_staging_dir()
    shift = layers.uid_shift
    reusable: dict[tuple[str, str, int, int, int], Path] = {}
    if previous is not None:
        old, root = previous
        for f in old.files:
            # Paths come from our own earlier layer, but never trust ``..`` in them.
            if ".." not in split_components(f.path):
                reusable[_same_file(f)] = root / f.path.lstrip("/")
    # The files to copy, read in batches: one query per file is slow for a large state.
    records = store.get_files(f.uuid for f in state.files if _same_file(f) not in reusable)
    copied = 0
    try:
        for placed in state.files:
            # A state saved before owners were checked may hold any id: refuse it here too.
            uid, gid = sandbox_owner(
                placed.uid, placed.gid, uid_shift=shift, field=f"files[{placed.path!r}]"
            )
            source = reusable.get(_same_file(placed))
            if source is not None and _link_in_root(staging, placed.path, source, uid=uid, gid=gid):
                continue
            record = records.get(placed.uuid) or store.get_file(placed.uuid)
            if record is None:
                raise FileNotFoundInStoreError(
                    f"file {placed.uuid} of directory state {state.id} is gone; sync again"
                )
            with open(blobs.path(record.sha256), "rb") as src:
                write_file_in_root(staging, placed.path, src, mode=placed.mode, uid=uid, gid=gid)
            copied += 1
        # Parents made above belong to the files' owner; the root of a layer is root's.
        os.chown(staging, shift, shift)
        os.chmod(staging, 0o755)
        # Linked files are durable already: only new entries need flushing.
        layer_id, size = layers.adopt(staging, linked=copied == 0)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    store.set_directory_state_layer(state.id, layer_id, size=size, span=1)
    return layer_id
