"""Uploaded files: stored once per sha256, found by uuid or digest, kept per namespace."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from sandtree.engine import Engine
from sandtree.errors import FileNotFoundInStoreError

pytestmark = pytest.mark.anyio


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_upload_returns_the_digest_and_size_of_the_content(engine: Engine) -> None:
    record = await engine.upload_file(_chunks(b"hello ", b"world"))

    assert record.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert record.size == 11
    assert record.namespace == "default"
    assert engine.file_path(record).read_bytes() == b"hello world"


async def test_identical_uploads_give_the_same_record(engine: Engine) -> None:
    first = await engine.upload_file(_chunks(b"same content"))
    second = await engine.upload_file(_chunks(b"same ", b"con", b"tent"))

    assert second == first
    assert engine.list_files() == [first]


async def test_different_content_gives_a_different_record(engine: Engine) -> None:
    first = await engine.upload_file(_chunks(b"one"))
    second = await engine.upload_file(_chunks(b"two"))

    assert first.uuid != second.uuid
    assert first.sha256 != second.sha256
    assert {f.uuid for f in engine.list_files()} == {first.uuid, second.uuid}


async def test_empty_upload_is_a_file_of_size_zero(engine: Engine) -> None:
    record = await engine.upload_file(_chunks())

    assert record.size == 0
    assert record.sha256 == hashlib.sha256(b"").hexdigest()
    assert engine.file_path(record).read_bytes() == b""


async def test_get_file_by_uuid_and_by_sha256(engine: Engine) -> None:
    record = await engine.upload_file(_chunks(b"findable"))

    assert engine.get_file(record.uuid) == record
    assert engine.get_file(record.sha256) == record
    assert engine.get_file(record.sha256.upper()) == record


async def test_get_file_of_unknown_reference_is_not_found(engine: Engine) -> None:
    await engine.upload_file(_chunks(b"something"))

    with pytest.raises(FileNotFoundInStoreError):
        engine.get_file("00000000-0000-4000-8000-000000000000")
    with pytest.raises(FileNotFoundInStoreError):
        engine.get_file(hashlib.sha256(b"never uploaded").hexdigest())


async def test_same_content_in_two_namespaces_is_two_records_one_blob(engine: Engine) -> None:
    mine = await engine.upload_file(_chunks(b"shared bytes"))
    theirs = await engine.upload_file(_chunks(b"shared bytes"), namespace="other")

    assert mine.uuid != theirs.uuid
    assert mine.sha256 == theirs.sha256
    assert engine.file_path(mine) == engine.file_path(theirs)
    assert engine.get_file(mine.sha256) == mine
    assert engine.get_file(mine.sha256, namespace="other") == theirs


async def test_file_of_another_namespace_is_not_found(engine: Engine) -> None:
    theirs = await engine.upload_file(_chunks(b"private"), namespace="other")

    with pytest.raises(FileNotFoundInStoreError):
        engine.get_file(theirs.uuid)
    with pytest.raises(FileNotFoundInStoreError):
        engine.get_file(theirs.sha256)
    assert engine.list_files() == []


async def test_list_files_pages(engine: Engine) -> None:
    records = [await engine.upload_file(_chunks(f"file {i}".encode())) for i in range(5)]

    first = engine.list_files(limit=2)
    rest = engine.list_files(limit=10, offset=2)

    assert len(first) == 2
    assert len(rest) == 3
    assert {f.uuid for f in first + rest} == {r.uuid for r in records}


async def test_failed_upload_leaves_no_record_and_no_temporary_file(engine: Engine) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await engine.upload_file(broken())

    assert engine.list_files() == []
    assert list((engine.blobs.root / "tmp").iterdir()) == []
    assert not (engine.blobs.root / "blobs").exists() or not any(
        (engine.blobs.root / "blobs").rglob("*")
    )


async def test_large_upload_in_many_chunks(engine: Engine) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    record = await engine.upload_file(_chunks(*([chunk] * 32)))

    assert record.size == 2 * 1024 * 1024
    assert record.sha256 == hashlib.sha256(chunk * 32).hexdigest()
