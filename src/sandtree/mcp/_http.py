"""``sandtree mcp --http``: the streamable HTTP app, behind a bearer token.

Over stdio the MCP server talks only to the process that started it. Over HTTP any local
process could connect and act with the server's sandtree token, so every request must carry
``Authorization: Bearer <token>``: the one given (``--http-token``), or one made on the first
start and kept in ``<state dir>/http-token`` (0600) for the agent's config to read.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

# ASGI's shapes, spelled out: the MCP package imports no web framework itself (the layering
# test); the SDK's app is what serves.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["TOKEN_FILE", "BearerAuth", "http_app", "http_token"]

#: Where the HTTP endpoint's token is kept, under the MCP server's state directory.
TOKEN_FILE = "http-token"


def http_token(state_dir: Path) -> tuple[str, bool]:
    """The token kept in ``state_dir``, made (0600) on first use; and whether it was made."""
    path = state_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token, False
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token, True


class BearerAuth:
    """Answers 401 to every HTTP request without ``Authorization: Bearer <token>``, before
    the MCP app reads a byte of it; the app's lifespan passes through."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, secret = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(secret.strip(), self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "send 'Authorization: Bearer <token>': the token `sandtree mcp --http` "
                f"printed on its first start, kept in its state directory as {TOKEN_FILE}",
                "status": 401,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="sandtree-mcp"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def http_app(server: MCPServer, *, token: str, host: str) -> ASGIApp:
    """``server``'s streamable HTTP app at ``/mcp``, behind ``token``."""
    app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    return BearerAuth(app, token=token)
