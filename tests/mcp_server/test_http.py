"""``sandtree mcp --http``'s bearer token: made once and kept private, required on every
request before the MCP app sees it."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from sandtree.mcp import TOKEN_FILE, BearerAuth, http_token

pytestmark = pytest.mark.anyio


class Recorder:
    """The app behind the guard: counts what reaches it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"mcp"})


def _client(app: BearerAuth) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_a_request_without_the_token_gets_401_and_never_reaches_the_mcp_app() -> None:
    inner = Recorder()
    async with _client(BearerAuth(inner, token="s3cret")) as http:
        bare = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "tools/list", "id": 1})
        wrong = await http.post("/mcp", headers={"Authorization": "Bearer guess"}, json={})
        basic = await http.post("/mcp", headers={"Authorization": "Basic s3cret"}, json={})

    assert [bare.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN_FILE in bare.json()["error"]
    assert inner.calls == 0


async def test_a_request_with_the_token_reaches_the_mcp_app() -> None:
    inner = Recorder()
    async with _client(BearerAuth(inner, token="s3cret")) as http:
        answer = await http.post("/mcp", headers={"Authorization": "Bearer s3cret"}, json={})

    assert answer.status_code == 200
    assert answer.text == "mcp"
    assert inner.calls == 1


def test_the_token_is_made_once_readable_only_by_its_owner_and_then_reused(
    tmp_path: Path,
) -> None:
    first, made = http_token(tmp_path / "state")
    again, made_again = http_token(tmp_path / "state")

    path = tmp_path / "state" / TOKEN_FILE
    assert (made, made_again) == (True, False)
    assert again == first
    assert len(first) >= 32
    assert path.read_text(encoding="utf-8").strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
