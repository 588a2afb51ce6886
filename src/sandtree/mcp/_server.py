"""The MCP server: tools, resources and prompts over one ``SandtreeClient``."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from sandtree import __version__

from ._context import McpContext
from ._guide import INSTRUCTIONS
from ._prompts import register_prompts
from ._resources import register_resources
from ._tools_files import register_file_tools
from ._tools_images import register_image_tools
from ._tools_runs import register_run_tools

__all__ = ["build_server"]


def build_server(mc: McpContext) -> MCPServer:
    """An MCP server whose tools act through ``mc.client`` (a remote or in-process server)."""
    server: MCPServer = MCPServer(
        name="sandtree", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )
    register_image_tools(server, mc)
    register_run_tools(server, mc)
    register_file_tools(server, mc)
    register_resources(server, mc)
    register_prompts(server)
    return server
