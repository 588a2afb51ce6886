"""An MCP client used as an agent uses it, shared by the in-process and end-to-end tests."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client
from mcp.shared.exceptions import MCPError


class McpAgent:
    """``call`` returns a tool's JSON result, ``fail`` its error text, ``read`` a resource."""

    def __init__(self, session: Client, name: str = "sandtree") -> None:
        self.session = session
        self.name = name

    async def call(self, tool: str, **arguments: Any) -> Any:
        result = await self.session.call_tool(tool, arguments)
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert not result.is_error, f"{self.name}: {tool}({arguments}) failed: {text}"
        return json.loads(text)

    async def fail(self, tool: str, **arguments: Any) -> str:
        result = await self.session.call_tool(tool, arguments)
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert result.is_error, f"{self.name}: {tool}({arguments}) did not fail: {text}"
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
