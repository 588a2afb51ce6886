"""``sandtree mcp``: the MCP server for agents, over stdio or streamable HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click

from sandtree.client import SandtreeClient
from sandtree.config import Settings
from sandtree.errors import SandtreeError

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["mcp"]


@click.command()
@click.option("--url", default=None, help="The sandtree server [env SANDTREE_URL].")
@click.option("--token", default=None, help="Its API token [env SANDTREE_TOKEN].")
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address.")
@click.option("--port", type=int, default=9451, show_default=True, help="HTTP port.")
@click.option(
    "--http-token",
    envvar="SANDTREE_MCP_HTTP_TOKEN",
    default=None,
    help="The bearer token HTTP clients must send [default: made once, kept in "
    "<state-dir>/http-token].",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Local caches (rsync) [default: ~/.local/state/sandtree/mcp].",
)
def mcp(
    url: str | None,
    token: str | None,
    use_http: bool,
    host: str,
    port: int,
    http_token: str | None,
    state_dir: Path | None,
) -> None:
    """Serve the MCP tools (run, rsync, import_image, …) to an agent.

    With no --url, SANDTREE_URL or client config it starts the embedded server itself, so
    one line in an agent's MCP config is the whole set-up. Over HTTP every request must send
    'Authorization: Bearer <token>' (the token is printed on the first start and kept in
    <state-dir>/http-token, 0600); stdio needs none.

    \b
    Example (Claude Code):
      claude mcp add sandtree -- sandtree mcp
      sandtree mcp --http --port 9451      # http://127.0.0.1:9451/mcp
      claude mcp add --transport http sandtree http://127.0.0.1:9451/mcp \\
        --header "Authorization: Bearer $(cat ~/.local/state/sandtree/mcp/http-token)"
    """
    from sandtree.client import default_state_dir, resolve_server
    from sandtree.mcp import McpContext, build_server

    state = state_dir or default_state_dir()
    try:
        connection = resolve_server(url=url, token=token)
        settings = Settings.from_env() if use_http else None
    except SandtreeError as exc:
        raise click.ClickException(exc.message) from exc

    async def main() -> None:
        async with SandtreeClient(connection.url, connection.token) as client:
            mc = McpContext(client=client, state_dir=state, token=connection.token)
            server = build_server(mc)
            try:
                if settings is not None:
                    await _serve_http(server, settings, host, port, state, http_token)
                else:
                    await server.run_stdio_async()
            finally:
                mc.close()

    anyio.run(main)


async def _serve_http(
    server: MCPServer,
    settings: Settings,
    host: str,
    port: int,
    state_dir: Path,
    given_token: str | None,
) -> None:
    """Serve ``server`` at ``/mcp`` behind a bearer token, on the same guarded edge (header
    deadlines, connection cap) as ``sandtree serve``."""
    import uvicorn

    from sandtree.cli._http_edge import edge_options
    from sandtree.mcp import TOKEN_FILE, http_app, http_token

    secret, made = (given_token, False) if given_token else http_token(state_dir)
    click.echo(f"sandtree mcp on http://{host}:{port}/mcp", err=True)
    if made:
        click.echo(f"its bearer token (shown once; also in {state_dir / TOKEN_FILE}):", err=True)
        click.echo(f"  {secret}", err=True)
    elif not given_token:
        path = state_dir / TOKEN_FILE
        click.echo(f"clients send 'Authorization: Bearer <the token in {path}>'", err=True)
    app = http_app(server, token=secret, host=host)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", **edge_options(settings)
    )
    await uvicorn.Server(config).serve()
