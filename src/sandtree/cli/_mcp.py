"""``sandtree mcp``: the MCP server for agents, over stdio or streamable HTTP."""

from __future__ import annotations

from pathlib import Path

import anyio
import click

from sandtree.client import SandtreeClient
from sandtree.errors import SandtreeError

__all__ = ["mcp"]


@click.command()
@click.option("--url", default=None, help="The sandtree server [env SANDTREE_URL].")
@click.option("--token", default=None, help="Its API token [env SANDTREE_TOKEN].")
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address.")
@click.option("--port", type=int, default=9451, show_default=True, help="HTTP port.")
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
    state_dir: Path | None,
) -> None:
    """Serve the MCP tools (run, rsync, import_image, …) to an agent.

    With no --url, SANDTREE_URL or client config it starts the embedded server itself, so
    one line in an agent's MCP config is the whole set-up.

    \b
    Example (Claude Code):
      claude mcp add sandtree -- sandtree mcp
      sandtree mcp --http --port 9451      # http://127.0.0.1:9451/mcp
    """
    from sandtree.client import default_state_dir, resolve_server
    from sandtree.mcp import McpContext, build_server

    try:
        connection = resolve_server(url=url, token=token)
    except SandtreeError as exc:
        raise click.ClickException(exc.message) from exc

    async def main() -> None:
        async with SandtreeClient(connection.url, connection.token) as client:
            mc = McpContext(
                client=client, state_dir=state_dir or default_state_dir(), token=connection.token
            )
            server = build_server(mc)
            try:
                if use_http:
                    click.echo(f"sandtree mcp on http://{host}:{port}/mcp", err=True)
                    await server.run_streamable_http_async(
                        host=host, port=port, streamable_http_path="/mcp"
                    )
                else:
                    await server.run_stdio_async()
            finally:
                mc.close()

    anyio.run(main)
