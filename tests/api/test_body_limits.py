"""Request bodies at the edge: caps (413 before or while reading), deadlines (408), the
permission check before the body, and the per-token cap on requests in flight."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from sandtree.api import PERMISSIONS, TokenStore, create_app
from sandtree.engine import Engine
from sandtree.testing import make_engine

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


class EdgeApi:
    """The app over an engine with small edge limits, and tokens to call it with."""

    def __init__(self, engine: Engine, tokens: TokenStore, http: httpx.AsyncClient) -> None:
        self.engine, self.tokens, self.http = engine, tokens, http

    def token(self, *permissions: str, namespace: str = "default") -> dict[str, str]:
        _, secret = self.tokens.create(
            name="t",
            namespace=namespace,
            permissions=permissions or PERMISSIONS,
            created_at="2026-01-01T00:00:00+00:00",
        )
        return {"Authorization": f"Bearer {secret}"}

    def stored_blobs(self) -> list[Path]:
        root = self.engine.settings.data_dir
        return [p for p in root.rglob("*") if p.is_file() and "blobs" in p.parts]

    def temporary_files(self) -> list[Path]:
        return [p for p in self.engine.settings.data_dir.rglob("tmp/*") if p.is_file()]


_LIMITS: dict[str, Any] = {
    "max_json_bytes": 4096,
    "max_directory_state_bytes": 64 * 1024,
    "max_directory_state_entries": 5,
    "max_upload_bytes": 256 * 1024,
    "max_upload_entries": 3,
    "body_timeout": 0.5,
    "max_requests_per_token": 2,
}


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeApi]:
    tokens = TokenStore(tmp_path / "tokens.db")
    async with make_engine(tmp_path / "data", **_LIMITS) as engine:
        app = create_app(engine, tokens_store=tokens, manage_engine=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandtree") as http:
            yield EdgeApi(engine, tokens, http)
    tokens.close()


class CountingBody:
    """A request body that records how much of it the server pulled."""

    def __init__(self, total: int, chunk: int = 1024) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            size = min(self.chunk, self.total - self.pulled)
            self.pulled += size
            yield b" " * size


async def test_a_json_body_past_the_cap_is_refused_with_413_naming_the_cap_and_uploads(
    edge: EdgeApi,
) -> None:
    body = {"command": "cat", "image": "tag:base", "stdin": {"value": "x" * 5000}}

    answer = await edge.http.post("/v1/instances", headers=edge.token(), json=body)

    assert answer.status_code == 413
    assert "4096 bytes" in answer.json()["error"]
    assert "POST /v1/files" in answer.json()["error"]


async def test_a_declared_length_past_the_cap_is_refused_before_any_byte_is_read(
    edge: EdgeApi,
) -> None:
    body = CountingBody(1024 * 1024)
    headers = {**edge.token(), "Content-Length": str(body.total)}

    answer = await edge.http.post("/v1/files/lookup", headers=headers, content=body)

    assert answer.status_code == 413
    assert body.pulled <= body.chunk  # at most what the transport sends with the headers


async def test_a_body_without_a_length_is_cut_once_it_grows_past_the_cap(edge: EdgeApi) -> None:
    body = CountingBody(1024 * 1024)

    answer = await edge.http.post("/v1/files/lookup", headers=edge.token(), content=body)

    assert answer.status_code == 413
    assert body.pulled < 4096 + 2 * body.chunk


async def test_a_list_only_token_gets_403_for_a_run_without_its_body_being_read(
    edge: EdgeApi,
) -> None:
    body = CountingBody(1024 * 1024)

    answer = await edge.http.post("/v1/instances", headers=edge.token("list"), content=body)

    assert answer.status_code == 403
    assert body.pulled <= body.chunk


async def test_an_unauthenticated_body_is_not_read(edge: EdgeApi) -> None:
    body = CountingBody(1024 * 1024)

    answer = await edge.http.post("/v1/files", content=body)

    assert answer.status_code == 401
    assert body.pulled <= body.chunk


async def test_json_nested_two_thousand_deep_is_a_400_not_a_server_error(edge: EdgeApi) -> None:
    answer = await edge.http.post(
        "/v1/files/lookup", headers=edge.token(), content=b"[" * 2000 + b"]" * 2000
    )

    assert answer.status_code == 400
    assert "send a JSON body like" in answer.json()["error"]


async def test_an_upload_past_the_cap_is_refused_and_nothing_of_it_is_stored(
    edge: EdgeApi,
) -> None:
    body = CountingBody(1024 * 1024, chunk=16 * 1024)

    answer = await edge.http.post("/v1/files", headers=edge.token(), content=body)

    assert answer.status_code == 413
    assert "max_upload_bytes" in answer.json()["error"]
    assert body.pulled < 2 * 256 * 1024
    assert edge.stored_blobs() == []
    assert edge.temporary_files() == []
    listed = await edge.http.get("/v1/files", headers=edge.token())
    assert listed.json() == {"files": []}


def _tar(members: int, size: int = 10) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(members):
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([i % 256]) * size))
    return out.getvalue()


async def test_a_tar_batch_of_too_many_members_stores_none_of_them(edge: EdgeApi) -> None:
    answer = await edge.http.post("/v1/files/batch", headers=edge.token(), content=_tar(4))

    assert answer.status_code == 413
    assert "max_upload_entries" in answer.json()["error"]
    assert edge.stored_blobs() == []


async def test_a_tar_batch_within_the_caps_is_stored(edge: EdgeApi) -> None:
    answer = await edge.http.post("/v1/files/batch", headers=edge.token(), content=_tar(3))

    assert answer.status_code == 201
    assert [f["name"] for f in answer.json()["files"]] == ["f0", "f1", "f2"]


async def test_a_tar_batch_past_the_byte_cap_stores_none_of_it(edge: EdgeApi) -> None:
    answer = await edge.http.post(
        "/v1/files/batch", headers=edge.token(), content=_tar(2, size=200 * 1024)
    )

    assert answer.status_code == 413
    assert edge.stored_blobs() == []


async def test_a_lookup_of_more_digests_than_allowed_is_refused(api: Api) -> None:
    # The default JSON cap (the shared ``api``, not ``edge``'s small one) holds the digests.
    answer = await api.http.post(
        "/v1/files/lookup", headers=api.auth, json={"sha256": ["0" * 64] * 10_001}
    )

    assert answer.status_code == 413
    assert "10000 digests" in answer.json()["error"]


async def test_a_directory_state_of_more_files_than_allowed_is_refused(edge: EdgeApi) -> None:
    headers = edge.token()
    uploaded = (await edge.http.post("/v1/files", headers=headers, content=b"hi")).json()
    files = {f"/app/{i}": {"uuid": uploaded["uuid"]} for i in range(6)}

    answer = await edge.http.post("/v1/directory_states", headers=headers, json={"files": files})

    assert answer.status_code == 413
    assert "at most 5 files" in answer.json()["error"]


async def test_a_directory_state_body_may_be_larger_than_other_json_bodies(
    edge: EdgeApi,
) -> None:
    headers = edge.token()
    uploaded = (await edge.http.post("/v1/files", headers=headers, content=b"hi")).json()
    files = {f"/app/{'d' * 1500}/{i}": {"uuid": uploaded["uuid"]} for i in range(5)}
    body = json.dumps({"files": files}).encode()
    assert len(body) > 4096

    answer = await edge.http.post("/v1/directory_states", headers=headers, content=body)

    assert answer.status_code == 201, answer.text


async def test_a_body_that_stops_arriving_is_cut_off_with_408(edge: EdgeApi) -> None:
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"sha256": ['
        await never.wait()  # the client goes quiet for good
        yield b"]}"

    answer = await edge.http.post("/v1/files/lookup", headers=edge.token(), content=stalled())

    assert answer.status_code == 408
    assert answer.headers["connection"] == "close"
    assert "too slowly" in answer.json()["error"]


async def test_a_body_dripping_a_byte_at_a_time_is_cut_off_with_408(edge: EdgeApi) -> None:
    sent = 0

    async def drip() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            await asyncio.sleep(0.05)  # the attack's pace: always some bytes, never enough
            sent += 1
            yield b" "

    answer = await edge.http.post("/v1/files", headers=edge.token(), content=drip())

    assert answer.status_code == 408
    assert sent < 100  # cut near body_timeout (0.5 s), not when the client gives up
    assert edge.temporary_files() == []


async def test_a_token_past_its_requests_in_flight_gets_429_and_others_are_served(
    edge: EdgeApi,
) -> None:
    headers, other = edge.token(), edge.token()
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield b"x"
        await release.wait()

    # Two uploads of this token wait for their bodies; a third request of it is refused.
    uploads = [
        asyncio.create_task(edge.http.post("/v1/files", headers=headers, content=held()))
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(10):
            while True:
                third = await edge.http.get("/v1/files", headers=headers)
                if third.status_code == 429:
                    break
                await asyncio.sleep(0.01)  # polled until both uploads are in flight
        served = await edge.http.get("/v1/files", headers=other)
    finally:
        release.set()
        done = await asyncio.gather(*uploads)

    assert "max_requests_per_token" in third.json()["error"]
    assert served.status_code == 200
    assert [d.status_code for d in done] == [201, 201]
    assert (await edge.http.get("/v1/files", headers=headers)).status_code == 200
