"""Uploaded file content, stored once per sha256 under ``<root>/blobs/ab/<sha256>``."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import BinaryIO

from sandtree.engine._clock import now_iso
from sandtree.engine.layers._paths import write_file_in_root
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import DirectoryState, PlacedFile
from sandtree.errors import (
    FileNotFoundInStoreError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
)

__all__ = [
    "BlobStore",
    "StateLayers",
    "build_state_layer",
    "create_directory_state",
    "get_directory_state",
]

_MAX_STATE_FILES = 200_000
_libc = ctypes.CDLL(None, use_errno=True)


class BlobStore:
    """Content-addressed blobs. Writes go to a temporary file and are renamed in when whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> tuple[str, int]:
        """Store a stream without holding it in memory; returns ``(sha256, size)``."""
        digest = hashlib.sha256()
        size = 0
        tmp = self._tmp / uuid.uuid4().hex
        try:
            # Chunk writes to a local file are faster inline than via a thread hop per chunk.
            with open(tmp, "wb") as out:  # noqa: ASYNC230
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            target = self.path(sha)
            if target.exists():
                tmp.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, target)
            return sha, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_tar(self, tar_stream: BinaryIO) -> list[tuple[str, str, int]]:
        """Store every regular file of an uncompressed tar stream; returns ``(member name,
        sha256, size)`` for each. One syncfs at the end makes them all durable, where a
        file at a time would fsync thousands of times."""
        stored: list[tuple[str, str, int]] = []
        try:
            with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    source = tar.extractfile(member)
                    if source is None:
                        continue
                    digest = hashlib.sha256()
                    tmp = self._tmp / uuid.uuid4().hex
                    with open(tmp, "wb") as out:
                        while chunk := source.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                    sha = digest.hexdigest()
                    target = self.path(sha)
                    if target.exists():
                        tmp.unlink()
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.rename(tmp, target)
                    stored.append((member.name, sha, member.size))
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidRequestError(
                f"the body is not a tar archive ({exc}); send an uncompressed tar of the files"
            ) from exc
        _syncfs(self.root)
        return stored

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp / uuid.uuid4().hex
            tmp.write_bytes(data)
            os.rename(tmp, target)
        return sha, len(data)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def create_directory_state(
    store: MetadataStore, files: Sequence[PlacedFile], *, namespace: str
) -> DirectoryState:
    """Save ``files`` as a directory state of ``namespace``; each must be uploaded there."""
    if len(files) > _MAX_STATE_FILES:
        raise LimitExceededError(
            f"a directory state holds at most {_MAX_STATE_FILES} files, not {len(files)}; "
            "sync a smaller tree or exclude generated files"
        )
    for placed in files:
        record = store.get_file(placed.uuid)
        if record is None or record.namespace != namespace:
            raise FileNotFoundInStoreError(
                f"file {placed.uuid} for {placed.path} was not uploaded; upload it first"
            )
    created = now_iso()
    state_id = store.add_directory_state(namespace, files, created)
    return DirectoryState(id=state_id, namespace=namespace, created_at=created, files=tuple(files))


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
                layer = await asyncio.to_thread(
                    build_state_layer, self._store, self._layers, self._blobs, state
                )
            return layer


def build_state_layer(
    store: MetadataStore, layers: LayerStore, blobs: BlobStore, state: DirectoryState
) -> str:
    """Write a directory state's files into a new layer (blocking); returns its id."""
    staging = layers.new_staging_dir()
    shift = layers.uid_shift
    try:
        for placed in state.files:
            record = store.get_file(placed.uuid)
            if record is None:
                raise FileNotFoundInStoreError(
                    f"file {placed.uuid} of directory state {state.id} is gone; sync again"
                )
            with open(blobs.path(record.sha256), "rb") as src:
                write_file_in_root(
                    staging,
                    placed.path,
                    src,
                    mode=placed.mode,
                    uid=placed.uid + shift,
                    gid=placed.gid + shift,
                )
        # Parents made above belong to the files' owner; the root of a layer is root's.
        os.chown(staging, shift, shift)
        os.chmod(staging, 0o755)
        layer_id, size = layers.adopt(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    store.set_directory_state_layer(state.id, layer_id, size=size, span=1)
    return layer_id
