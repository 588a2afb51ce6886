"""``/v1/files``: streamed uploads, dedup by sha256, lookups, and placing files in runs."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from sandtree.testing import read_file

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


async def _chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = bytes([sent // size % 251]) * min(size, total - sent)
        sent += len(chunk)
        yield chunk


async def test_a_streamed_upload_is_stored_once_per_sha256(api: Api) -> None:
    total = 8 * 1024 * 1024 + 3
    expected = hashlib.sha256()
    async for chunk in _chunks(total):
        expected.update(chunk)

    first = await api.http.post("/v1/files", headers=api.auth, content=_chunks(total))
    again = await api.http.post("/v1/files", headers=api.auth, content=_chunks(total))

    assert first.status_code == 201
    body = first.json()
    assert body["sha256"] == expected.hexdigest()
    assert body["size"] == total
    assert again.json()["uuid"] == body["uuid"]
    assert api.engine.file_path(api.engine.get_file(body["uuid"])).stat().st_size == total


async def test_head_and_get_by_sha256_and_the_list(api: Api) -> None:
    uploaded = (await api.http.post("/v1/files", headers=api.auth, content=b"hello")).json()
    sha = uploaded["sha256"]
    missing = "0" * 64

    assert (await api.http.head(f"/v1/files/{sha}", headers=api.auth)).status_code == 200
    assert (await api.http.head(f"/v1/files/{missing}", headers=api.auth)).status_code == 404
    got = await api.http.get(f"/v1/files/{sha.upper()}", headers=api.auth)
    assert got.json()["uuid"] == uploaded["uuid"]
    listed = (await api.http.get("/v1/files", headers=api.auth)).json()["files"]
    assert [f["sha256"] for f in listed] == [sha]
    recent = await api.http.get("/v1/files", headers=api.auth, params={"until": "1h"})
    assert recent.json() == {"files": []}


async def test_a_malformed_sha256_is_simply_not_found(api: Api) -> None:
    # The contract documents 404, not 400, for GET and HEAD /files/{sha256}.
    response = await api.http.get("/v1/files/not-a-hash", headers=api.auth)

    assert response.status_code == 404
    assert "64 hexadecimal characters" in response.json()["error"]


async def test_uploading_needs_the_upload_permission(api: Api) -> None:
    response = await api.http.post("/v1/files", headers=api.token("list"), content=b"x")

    assert response.status_code == 403
    assert "'upload'" in response.json()["error"]


async def test_another_namespace_does_not_see_a_file(api: Api) -> None:
    sha = (await api.http.post("/v1/files", headers=api.auth, content=b"mine")).json()["sha256"]
    other = api.token(namespace="team-b")

    assert (await api.http.get(f"/v1/files/{sha}", headers=other)).status_code == 404
    assert (await api.http.get("/v1/files", headers=other)).json() == {"files": []}


async def test_an_uploaded_file_is_placed_into_a_run_with_its_mode(api: Api, rootfs: Path) -> None:
    await api.engine.import_local(rootfs, tag="base")
    uploaded = (await api.http.post("/v1/files", headers=api.auth, content=b"#!/bin/sh\n")).json()

    created = await api.http.post(
        "/v1/instances",
        headers=api.auth,
        json={
            "command": "true",
            "image": "tag:base",
            "files": {"/opt/run.sh": {"uuid": uploaded["uuid"], "mode": "0755"}},
        },
    )
    with anyio.fail_after(10):
        op = await api.engine.wait_operation(api.engine.get_operation(created.json()["uuid"]))

    assert op.result_image is not None
    child = api.engine.resolve_image(op.result_image)
    assert read_file(api.engine, child, "/opt/run.sh") == b"#!/bin/sh\n"
    assert api.engine.stat_path(child, "/opt/run.sh").mode & 0o777 == 0o755


def _tar(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a-link")
        link.type, link.linkname = tarfile.SYMTYPE, "0"
        tar.addfile(link)
    return buf.getvalue()


async def test_a_tar_of_many_files_uploads_each_once_in_order(api: Api) -> None:
    import hashlib

    body = _tar({"0": b"alpha", "1": b"beta", "2": b"alpha"})
    response = await api.http.post(
        "/v1/files/batch", content=body, headers={**api.auth, "Content-Type": "application/x-tar"}
    )

    assert response.status_code == 201
    files = response.json()["files"]
    assert [f["name"] for f in files] == ["0", "1", "2"]  # the symlink is not a file
    assert files[0]["sha256"] == hashlib.sha256(b"alpha").hexdigest()
    assert files[0]["uuid"] == files[2]["uuid"]
    single = await api.http.post("/v1/files", content=b"beta", headers=api.auth)
    assert single.json()["uuid"] == files[1]["uuid"]


async def test_a_batch_that_is_not_a_tar_is_a_400(api: Api) -> None:
    response = await api.http.post("/v1/files/batch", content=b"not a tar" * 100, headers=api.auth)
    assert response.status_code == 400
    assert "uncompressed tar" in response.json()["error"]


async def test_lookup_answers_the_contents_the_namespace_has(api: Api) -> None:
    import hashlib

    have = (await api.http.post("/v1/files", content=b"here", headers=api.auth)).json()
    absent = hashlib.sha256(b"absent").hexdigest()
    response = await api.http.post(
        "/v1/files/lookup", json={"sha256": [have["sha256"], absent, "junk"]}, headers=api.auth
    )
    other = await api.http.post(
        "/v1/files/lookup", json={"sha256": [have["sha256"]]}, headers=api.token(namespace="x")
    )

    assert response.status_code == 200
    assert list(response.json()["files"]) == [have["sha256"]]
    assert response.json()["files"][have["sha256"]]["uuid"] == have["uuid"]
    assert other.json()["files"] == {}


async def test_lookup_refuses_a_body_without_a_digest_list(api: Api) -> None:
    response = await api.http.post("/v1/files/lookup", json={"sha256": "x"}, headers=api.auth)
    assert response.status_code == 400
