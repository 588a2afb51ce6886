"""``sandtree files``: upload files (stored once per content) and list them."""

from __future__ import annotations

from pathlib import Path

import click

from sandtree.client import SandtreeClient

from ._common import CliState, client_command, emit, out, uuid_table

__all__ = ["files"]


@click.group()
def files() -> None:
    """Uploaded files: place them into runs by UUID.

    \b
    Example:
      sandtree files upload ./data.csv
      sandtree files list
    """


@files.command("upload")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@client_command
async def upload(client: SandtreeClient, state: CliState, paths: tuple[Path, ...]) -> None:
    """Upload files (streamed; identical content is stored once); prints their UUIDs.

    \b
    Example:
      sandtree files upload ./main.py ./config.toml --json
    """
    rows = []
    for path in paths:
        found = await client.upload_file(path)
        rows.append({"path": str(path), **found})

    def human() -> None:
        for row in rows:
            out.print(f"{row['uuid']}  {row['sha256'][:12]}  {row['path']}")

    emit(state, rows, human)


@files.command("list")
@click.option("--limit", default=100, show_default=True)
@client_command
async def list_files(client: SandtreeClient, state: CliState, limit: int) -> None:
    """List uploaded files, newest first.

    \b
    Example:
      sandtree files list --limit 10
    """
    rows = await client.list_files(limit=limit)

    def human() -> None:
        table = uuid_table("sha256", "size", "created")
        for row in rows:
            table.add_row(str(row["uuid"]), str(row["sha256"])[:16], str(row.get("size")),
                          str(row.get("created_at", ""))[:19])  # fmt: skip
        out.print(table)

    emit(state, rows, human)
