"""Finding 5 (the API half) and its class, at the server's edge: bodies too large for what the
caller may do, bodies and headers sent too slowly, connections held open, a token holding
every slot, and the MCP server's HTTP endpoint open to any local process.

Every attack runs inside ``LatencyProbe(hostile.bob)``: bob's listings keep answering. The
server runs with short deadlines and small caps, so each attack is cut within seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandtree.mcp import TOKEN_FILE

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server

_HEADER_TIMEOUT, _BODY_TIMEOUT = 2, 3
_MAX_UPLOAD = 8 * 1024 * 1024
_MAX_CONNECTIONS, _MAX_REQUESTS_PER_TOKEN = 64, 16
#: How long an attack may go on before the test calls it uncut: far past every deadline.
_UNCUT = 60.0


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[HostileServer]:
    env = {
        "SANDTREE_HEADER_TIMEOUT": str(_HEADER_TIMEOUT),
        "SANDTREE_BODY_TIMEOUT": str(_BODY_TIMEOUT),
        "SANDTREE_MAX_UPLOAD_BYTES": str(_MAX_UPLOAD),
        "SANDTREE_MAX_CONNECTIONS": str(_MAX_CONNECTIONS),
        "SANDTREE_MAX_REQUESTS_PER_TOKEN": str(_MAX_REQUESTS_PER_TOKEN),
    }
    base = tmp_path_factory.mktemp("edge")
    with start_hostile_server(base, busybox_rootfs, env=env) as srv:
        yield srv


def _peak_rss_bytes(hostile: HostileServer) -> int:
    """The server's peak resident size so far (VmHWM): a spike between two reads shows."""
    status = Path(f"/proc/{hostile.server.process.pid}/status").read_text(encoding="utf-8")
    line = next(row for row in status.splitlines() if row.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _connect(hostile: HostileServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", hostile.server.port), timeout=_UNCUT)


def _drip(sock: socket.socket, data: bytes, pace: float = 0.1) -> tuple[int, bytes]:
    """Send ``data`` a byte every ``pace`` seconds until the server ends the connection;
    the bytes sent and what the server answered. Fails if it is never cut."""
    answer = b""
    end = time.monotonic() + _UNCUT
    for sent, byte in enumerate(data):
        assert time.monotonic() < end, f"the server took {sent} dripped bytes and never cut"
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return sent, answer
        # The attack's pace, and a look for the server's answer or close meanwhile.
        readable, _, _ = select.select([sock], [], [], pace)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return sent + 1, answer
            if not chunk:
                return sent + 1, answer
            answer += chunk
    raise AssertionError("every byte was taken at a byte per interval: the drip was never cut")


def _stored_blob_files(hostile: HostileServer) -> set[Path]:
    root = hostile.data_dir / "files"
    return {p for p in root.rglob("*") if p.is_file()}


def test_a_48_mib_json_body_from_a_list_only_token_is_refused_without_being_held(
    hostile: HostileServer,
) -> None:
    # The finding: a 48 MiB body raised the server to 1.4 GB before the permission check.
    body = b'{"command": "true", "image": "tag:busybox:latest", "args": [' + b'"x",' * (
        12 * 1024 * 1024
    )
    body = body[:-1] + b"]}"
    before = _peak_rss_bytes(hostile)
    with LatencyProbe(hostile.bob), hostile.alice_list.client() as http:
        spawn = http.post("/v1/instances", content=body)
        # A route the token may use: the body is refused by its size instead.
        lookup = http.post("/v1/files/lookup", content=body)

        def chunked() -> Iterator[bytes]:  # no Content-Length: cut once it grows past the cap
            for start in range(0, len(body), 1 << 20):
                yield body[start : start + (1 << 20)]

        streamed = http.post("/v1/files/lookup", content=chunked())
    grown = _peak_rss_bytes(hostile) - before

    assert spawn.status_code == 403, spawn.text
    assert lookup.status_code == 413, lookup.text
    assert "max_json_bytes" in lookup.json()["error"]
    assert streamed.status_code == 413, streamed.text
    assert grown < 200 * 1024 * 1024, f"the server's peak memory grew by {grown >> 20} MiB"


def test_an_upload_past_the_cap_is_refused_and_nothing_of_it_is_stored(
    hostile: HostileServer,
) -> None:
    before = _stored_blob_files(hostile)

    def chunks() -> Iterator[bytes]:
        for i in range(3 * _MAX_UPLOAD // (1 << 20)):
            yield bytes([i % 251]) * (1 << 20)

    with LatencyProbe(hostile.bob), hostile.alice.client() as http:
        answer = http.post("/v1/files", content=chunks())
        batch = http.post("/v1/files/batch", content=chunks())
        listed = http.get("/v1/files").json()["files"]

    assert answer.status_code == 413, answer.text
    assert "max_upload_bytes" in answer.json()["error"]
    assert batch.status_code == 413, batch.text
    assert _stored_blob_files(hostile) == before
    assert listed == []


def test_a_body_dripped_a_byte_at_a_time_is_cut_off(hostile: HostileServer) -> None:
    before = _stored_blob_files(hostile)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hostile.alice.secret}\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    with LatencyProbe(hostile.bob), contextlib.closing(_connect(hostile)) as sock:
        sock.sendall(head)
        sent, answer = _drip(sock, b"x" * 100_000)

    assert sent < 100_000
    # A 408 saying why, unless the reset of the bytes in flight overtook it.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert _stored_blob_files(hostile) == before


def test_headers_dripped_a_byte_at_a_time_are_cut_off(hostile: HostileServer) -> None:
    request = (
        f"GET /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hostile.alice.secret}\r\n"
        f"X-Slow: {'a' * 500}\r\n\r\n"
    ).encode()
    with LatencyProbe(hostile.bob), contextlib.closing(_connect(hostile)) as sock:
        sent, answer = _drip(sock, request)

    assert sent < len(request)  # cut before the headers were whole
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]


def _open_fds(hostile: HostileServer) -> int:
    return len(os.listdir(f"/proc/{hostile.server.process.pid}/fd"))


def test_many_idle_connections_do_not_lock_the_other_tenant_out(hostile: HostileServer) -> None:
    # Unbounded, idle connections cost the server a descriptor each until it runs out;
    # capped by refusing new ones, they would lock every other client out instead.
    baseline = _open_fds(hostile)
    with LatencyProbe(hostile.bob), contextlib.ExitStack() as held:
        for _ in range(4 * _MAX_CONNECTIONS):
            held.enter_context(contextlib.closing(_connect(hostile)))
        with hostile.bob.client() as fresh:  # a new connection, after the attacker's
            answer = fresh.get("/v1/images")
        during = _open_fds(hostile)

    assert answer.status_code == 200
    assert during - baseline <= _MAX_CONNECTIONS + 8, f"{during - baseline} more open fds"


def test_one_token_holding_many_requests_open_cannot_take_every_slot(
    hostile: HostileServer,
) -> None:
    started = httpx.post(
        f"{hostile.url}/v1/instances",
        headers={"Authorization": f"Bearer {hostile.alice.secret}"},
        json={"command": "sleep 30", "image": "tag:busybox:latest", "shell": True,
              "disposable": True, "timeout": 60},
        timeout=60,
    )  # fmt: skip
    assert started.status_code == 201, started.text
    op_id = started.json()["uuid"]
    statuses: list[int] = []
    try:
        with LatencyProbe(hostile.bob), contextlib.ExitStack() as held:
            # Event streams of a long run stay open: each one is a request in flight.
            for _ in range(2 * _MAX_CONNECTIONS):
                http = held.enter_context(hostile.alice.client())
                stream = held.enter_context(
                    http.stream("GET", f"/v1/operations/{op_id}/events", params={"follow": "1"})
                )
                statuses.append(stream.status_code)
            with hostile.bob.client() as fresh:
                answer = fresh.get("/v1/images")
    finally:
        with hostile.alice.client() as http:
            http.delete(f"/v1/operations/{op_id}")

    assert statuses.count(200) == _MAX_REQUESTS_PER_TOKEN
    assert set(statuses) == {200, 429}
    assert answer.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _mcp_http(tenant: Tenant, state_dir: Path) -> Iterator[str]:
    """``sandtree mcp --http`` for ``tenant``; its URL once it listens."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sandtree", "mcp", "--url", tenant.base_url,
         "--token", tenant.secret, "--state-dir", str(state_dir), "--http", "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        end = time.monotonic() + _UNCUT
        while True:  # a port has no event to wait on: probed, with a deadline
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < end, "sandtree mcp --http never listened"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_the_mcp_http_endpoint_refuses_a_local_process_without_its_token(
    hostile: HostileServer, tmp_path: Path
) -> None:
    # Any local process could call alice's tools (run, upload, ...) through her MCP server.
    initialize = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "intruder", "version": "1"}},
    }  # fmt: skip
    accept = {"Accept": "application/json, text/event-stream"}
    with LatencyProbe(hostile.bob), _mcp_http(hostile.alice, tmp_path / "mcp") as url:
        bare = httpx.post(url, json=initialize, headers=accept, timeout=30)
        guessed = httpx.post(
            url, json=initialize, headers={**accept, "Authorization": "Bearer guess"}, timeout=30
        )
        token = (tmp_path / "mcp" / TOKEN_FILE).read_text(encoding="utf-8").strip()
        allowed = httpx.post(
            url, json=initialize, headers={**accept, "Authorization": f"Bearer {token}"},
            timeout=30,
        )  # fmt: skip

    assert bare.status_code == 401
    assert guessed.status_code == 401
    assert "Bearer" in bare.headers["www-authenticate"]
    assert allowed.status_code == 200, allowed.text
    assert "sandtree" in allowed.text  # the server's name, in its initialize answer
