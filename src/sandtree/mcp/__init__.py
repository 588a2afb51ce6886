"""The MCP server for agents: the ConTree MCP surface (same tool names, parameters and
defaults), built on the official MCP SDK and the sandtree client.

Example (in process, as the tests do)::

    mc = McpContext(client=SandtreeClient(url, token), state_dir=tmp / "mcp")
    async with mcp.Client(build_server(mc)) as session:
        await session.call_tool("list_images", {})
"""

from sandtree.mcp._context import McpContext
from sandtree.mcp._http import TOKEN_FILE, BearerAuth, http_app, http_token
from sandtree.mcp._rsync import ExcludeRules, collect
from sandtree.mcp._server import build_server

__all__ = [
    "TOKEN_FILE",
    "BearerAuth",
    "ExcludeRules",
    "McpContext",
    "build_server",
    "collect",
    "http_app",
    "http_token",
]
