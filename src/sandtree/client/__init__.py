"""A client of the sandtree REST API (httpx), used by the MCP server, the CLI and tests."""

from sandtree.client._client import TERMINAL_STATUSES, SandtreeClient
from sandtree.client._config import (
    Connection,
    client_config_path,
    load_connection,
    write_client_config,
)
from sandtree.client._launch import default_state_dir, resolve_server
from sandtree.client._sse import Event

__all__ = [
    "TERMINAL_STATUSES",
    "Connection",
    "Event",
    "SandtreeClient",
    "client_config_path",
    "default_state_dir",
    "load_connection",
    "resolve_server",
    "write_client_config",
]
