"""An MCP client talking to our MCP server in process, whose API client talks to the app in
process, on the fake runtime."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, MCPError

from sandtree.api import TokenStore, create_app
from sandtree.client import SandtreeClient
from sandtree.engine import Engine, ImageRecord
from sandtree.mcp import McpContext, build_server


class Agent:
    """Calls tools as an agent does; ``call`` returns the JSON result, ``fail`` the error."""

    def __init__(self, session: Client, engine: Engine, mc: McpContext) -> None:
        self.session = session
        self.engine = engine
        self.mc = mc

    async def call(self, tool: str, **arguments: Any) -> Any:
        result = await self.session.call_tool(tool, arguments)
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert not result.is_error, f"{tool} failed: {text}"
        return json.loads(text)

    async def fail(self, tool: str, **arguments: Any) -> str:
        result = await self.session.call_tool(tool, arguments)
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert result.is_error, f"{tool} did not fail: {text}"
        return text

    async def read(self, uri: str) -> str:
        result = await self.session.read_resource(uri)
        return "".join(getattr(c, "text", "") for c in result.contents)

    async def read_fails(self, uri: str) -> str:
        """The error message reading ``uri`` answers (it must fail)."""
        try:
            await self.session.read_resource(uri)
        except MCPError as exc:
            return str(exc)
        raise AssertionError(f"reading {uri} did not fail")


@pytest.fixture
async def agent(engine: Engine, tmp_path: Path) -> AsyncIterator[Agent]:
    tokens = TokenStore(tmp_path / "tokens.db")
    # Room for the tests that start thirty runs at once (the default allows 16 in flight).
    _, secret = tokens.create(
        name="admin",
        created_at="2026-01-01T00:00:00+00:00",
        limits={"instance_max_concurrency": 64},
    )
    app = create_app(engine, tokens_store=tokens, manage_engine=False)
    transport = httpx.ASGITransport(app=app)
    async with SandtreeClient("http://sandtree", secret, transport=transport) as client:
        mc = McpContext(client=client, state_dir=tmp_path / "mcp-state", token=secret)
        async with Client(build_server(mc)) as session:
            yield Agent(session, engine, mc)
        mc.close()
    tokens.close()


@pytest.fixture
async def base(engine: Engine, rootfs: Path) -> ImageRecord:
    """The mini root filesystem imported as ``tag:base:1``."""
    return await engine.import_local(rootfs, tag="base:1")
