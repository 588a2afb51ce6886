"""The guarded HTTP edge: a real uvicorn with our protocol, driven by raw sockets that
behave as slowloris clients do."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from sandtree.cli._http_edge import edge_options
from sandtree.config import Settings

pytestmark = pytest.mark.anyio

#: Short deadlines, so each attack is cut within a second; every wait below is bounded by
#: ``_WAIT``, far past them.
_SETTINGS = Settings(header_timeout=0.5, body_timeout=0.5, max_connections=4)
_WAIT = 10.0


class App:
    """``/ok`` answers at once, ``/hold`` when ``release`` is set, ``POST /reject`` with a 403
    before reading the body."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0
        #: Set once ``max_connections`` requests wait in ``/hold``.
        self.all_held = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status = 200
        if scope["path"] == "/hold":
            self.holding += 1
            if self.holding >= _SETTINGS.max_connections:
                self.all_held.set()
            await self.release.wait()
        elif scope["path"] == "/reject":
            status = 403
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"4")],
            }
        )
        await send({"type": "http.response.body", "body": b"done"})


class Edge:
    def __init__(self, app: App, port: int) -> None:
        self.app, self.port = app, port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self, path: str = "/ok") -> bytes:
        """One whole request on a fresh connection; its answer."""
        reader, writer = await self.connect()
        try:
            request = f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            writer.write(request.encode())
            async with asyncio.timeout(_WAIT):
                return await reader.read()
        finally:
            writer.close()

    async def kept_open(
        self, request: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A fresh connection that sent ``request``, left open once its answer came."""
        reader, writer = await self.connect()
        writer.write(request)
        async with asyncio.timeout(_WAIT):
            answer = await reader.readuntil(b"done")
        return reader, writer, answer


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    app = App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", **edge_options(_SETTINGS))
    server = uvicorn.Server(config)
    sock.listen(128)  # connections made before uvicorn accepts wait in the backlog
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield Edge(app, sock.getsockname()[1])
    finally:
        app.release.set()
        server.should_exit = True
        await task


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before it closed the connection (fails if it never does)."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    edge: Edge,
) -> None:
    reader, writer = await edge.connect()

    answer = await _closed_within(reader, _WAIT)

    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_headers_sent_a_byte_at_a_time_are_cut_off_while_others_are_served(
    edge: Edge,
) -> None:
    reader, writer = await edge.connect()
    closed = asyncio.create_task(reader.read())  # done once the server ends the connection
    request = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
    sent, served = 0, []
    with contextlib.suppress(ConnectionError):
        for byte in request:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            served.append(await edge.get())  # another client, meanwhile
            await asyncio.sleep(0.02)  # the attack's pace
    async with asyncio.timeout(_WAIT):
        answer = await asyncio.gather(closed, return_exceptions=True)
    writer.close()

    assert sent < len(request)  # cut before the headers were whole
    # A 408, unless the reset of the unread bytes overtook it.
    assert isinstance(answer[0], ConnectionError) or answer[0].startswith(b"HTTP/1.1 408")
    assert served
    assert all(s.startswith(b"HTTP/1.1 200") for s in served)


async def test_idle_connections_past_the_cap_are_closed_to_serve_a_new_client(
    edge: Edge,
) -> None:
    idle = [await edge.connect() for _ in range(_SETTINGS.max_connections)]

    answer = await edge.get()
    oldest_reader = idle[0][0]
    closed = await _closed_within(oldest_reader, _WAIT)

    for _, writer in idle:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert closed == b""  # evicted, not timed out: no 408 was written


async def test_when_every_connection_is_busy_a_new_one_gets_503(edge: Edge) -> None:
    held = [asyncio.create_task(edge.get("/hold")) for _ in range(_SETTINGS.max_connections)]
    async with asyncio.timeout(_WAIT):
        await edge.app.all_held.wait()

    refused = await edge.get()
    edge.app.release.set()
    answers = await asyncio.gather(*held)

    assert refused.startswith(b"HTTP/1.1 503")
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)


async def test_the_unread_rest_of_a_refused_body_is_dropped_only_for_a_while(
    edge: Edge,
) -> None:
    reader, writer, head = await edge.kept_open(
        b"POST /reject HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n"
    )
    cut = False
    for _ in range(500):  # 25 s at this pace; the server gives the rest 0.5 s
        try:
            writer.write(b"x")
            await writer.drain()
        except ConnectionError:
            cut = True
            break
        if reader.at_eof():
            cut = True
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):  # the attack's pace, and a look for the close
                await reader.read(1)
    writer.close()

    assert head.startswith(b"HTTP/1.1 403")
    assert cut


async def test_a_kept_alive_connection_serves_a_second_request_after_a_pause(
    edge: Edge,
) -> None:
    reader, writer, first = await edge.kept_open(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.sleep(0.7)  # longer than the header timeout, shorter than keep-alive (5 s)
    writer.write(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    second = await _closed_within(reader, _WAIT)
    writer.close()

    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")


async def test_a_served_kept_alive_connection_outlasts_newer_never_served_ones(
    edge: Edge,
) -> None:
    reader, writer, _ = await edge.kept_open(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
    idle = [await edge.connect() for _ in range(_SETTINGS.max_connections)]

    evicted = await _closed_within(idle[0][0], _WAIT)  # the fourth newcomer evicted the first
    writer.write(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    again = await _closed_within(reader, _WAIT)

    for _, other in idle:
        other.close()
    writer.close()
    assert evicted == b""
    assert again.startswith(b"HTTP/1.1 200")
