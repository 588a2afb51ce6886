"""Uploaded file content, stored once per sha256 under ``<root>/blobs/ab/<sha256>``."""

from __future__ import annotations

import hashlib
import os
import tarfile
import uuid
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

from sandtree._datadir import private_dir
from sandtree.engine.layers._overlay import syncfs
from sandtree.errors import InvalidRequestError

__all__ = ["BlobStore"]


class BlobStore:
    """Content-addressed blobs. Writes go to a temporary file and are renamed in when whole."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)  # uploads are tenants' files: the server's eyes only
        self._tmp = private_dir(root / "tmp")

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
            self._settle(tmp, sha)
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
                    self._settle(tmp, digest.hexdigest())
                    stored.append((member.name, digest.hexdigest(), member.size))
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidRequestError(
                f"the body is not a tar archive ({exc}); send an uncompressed tar of the files"
            ) from exc
        syncfs(self.root)
        return stored

    def _settle(self, tmp: Path, sha: str) -> None:
        """Move a whole temporary file to its content's place (or drop it: already there)."""
        target = self.path(sha)
        if target.exists():
            tmp.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, target)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp / uuid.uuid4().hex
            tmp.write_bytes(data)
            os.rename(tmp, target)
        return sha, len(data)
