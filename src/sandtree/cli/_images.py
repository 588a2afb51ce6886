"""``sandtree images``: list, tag, import with a progress bar, and read images without a
sandbox (inspect, ls, cat, download, grep, diff, lineage as a tree)."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.tree import Tree

from sandtree.client import SandtreeClient

from ._common import CliState, client_command, emit, err_console, out

__all__ = ["images"]


@click.group()
def images() -> None:
    """Images: list, tag, import, inspect and read them, draw their lineage.

    \b
    Example:
      sandtree images import docker://alpine:3.20 --tag alpine:3.20
      sandtree images lineage tag:alpine:3.20
    """


def _image_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("uuid", "tag", "created")
    for row in rows:
        table.add_row(str(row["uuid"]), row.get("tag") or "", str(row.get("created_at", ""))[:19])
    return table


@images.command("list")
@click.option("--tag-prefix", "-t", default=None, help="Only tags starting with this.")
@click.option("--tagged/--untagged", default=None, help="Only tagged (or untagged) images.")
@click.option("--since", default=None, help="Newer than this (ISO time or 1h, 2d…).")
@click.option("--until", default=None, help="Older than this.")
@click.option("--limit", default=100, show_default=True)
@client_command
async def list_images(
    client: SandtreeClient,
    state: CliState,
    tag_prefix: str | None,
    tagged: bool | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """List images, newest first.

    \b
    Example:
      sandtree images list --tag-prefix python --json
    """
    rows = await client.list_images(
        limit=limit, tagged=tagged, tag_prefix=tag_prefix, since=since, until=until
    )
    emit(state, rows, lambda: out.print(_image_table(rows)))


@images.command("tag")
@click.argument("image")
@click.argument("tag")
@client_command
async def tag(client: SandtreeClient, state: CliState, image: str, tag: str) -> None:
    """Tag IMAGE as TAG (moving TAG if another image has it).

    \b
    Example:
      sandtree images tag 3f6c… myproj/deps:1
    """
    row = await client.set_tag(await client.resolve_image(image), tag)
    emit(state, row, lambda: out.print(f"{row['uuid']} tagged {row['tag']}"))


@images.command("untag")
@click.argument("image")
@click.argument("tag", required=False)
@client_command
async def untag(client: SandtreeClient, state: CliState, image: str, tag: str | None) -> None:
    """Remove TAG (or every tag) from IMAGE.

    \b
    Example:
      sandtree images untag tag:myproj/deps:1
    """
    uuid = await client.resolve_image(image)
    await client.remove_tag(uuid, tag)
    emit(state, {"uuid": uuid, "removed": tag}, lambda: out.print(f"{uuid} untagged"))


@images.command("import")
@click.argument("reference")
@click.option("--tag", default=None, help="Tag the imported image.")
@click.option("--platform", default=None, help="os/arch[/variant] [default: linux/amd64].")
@click.option("--username", default=None, help="Registry user (with --password).")
@click.option("--password", default=None, envvar="SANDTREE_REGISTRY_PASSWORD",
              help="Registry password or token [env SANDTREE_REGISTRY_PASSWORD].")  # fmt: skip
@click.option("--timeout", default=300, show_default=True, help="Seconds for the whole import.")
@client_command
async def import_image(
    client: SandtreeClient,
    state: CliState,
    reference: str,
    tag: str | None,
    platform: str | None,
    username: str | None,
    password: str | None,
    timeout: int,
) -> int:
    """Import REFERENCE from an OCI registry, showing layers and bytes as they arrive.

    \b
    Example:
      sandtree images import docker://python:3.11-slim --tag python:3.11
      sandtree images import registry.lan:5000/team/app@sha256:… --username me --password …
    """
    credentials = {"username": username, "password": password or ""} if username else None
    op_id = await client.import_image(
        reference, tag=tag, credentials=credentials, timeout=timeout, platform=platform
    )
    show = not state.json and err_console.is_terminal
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        disable=not show,
    ) as bar:
        task = bar.add_task(f"import {reference}", total=None)
        async for event in client.events(op_id, follow=True):
            if event.type == "progress":
                data = event.data
                bar.update(
                    task,
                    completed=data.get("bytes_done", 0),
                    total=data.get("bytes_total") or None,
                    description=f"{data.get('phase')} {data.get('layers_done')}/"
                    f"{data.get('layers_total')} layers",
                )
    done = await client.get_operation(op_id)

    def human() -> None:
        if done.get("status") == "SUCCESS":
            result = done.get("result") or {}
            label = f" as {result.get('tag')}" if result.get("tag") else ""
            out.print(f"imported {result.get('image')}{label}")
        else:
            err_console.print(f"[red]{done.get('status')}:[/] {done.get('error')}", markup=True)

    emit(state, done, human)
    return 0 if done.get("status") == "SUCCESS" else 1


@images.command("inspect")
@click.argument("image")
@client_command
async def inspect(client: SandtreeClient, state: CliState, image: str) -> None:
    """Show an image: tag, creation, parent, depth and the command that made it.

    \b
    Example:
      sandtree images inspect tag:busybox
    """
    tree = await client.lineage(await client.resolve_image(image))
    node = dict(tree["image"])
    node["parent"] = (tree.get("parent") or {}).get("uuid")
    node["children"] = [c["uuid"] for c in tree.get("children", [])]

    def human() -> None:
        for key in ("uuid", "tag", "created_at", "depth", "command", "parent", "operation_uuid"):
            out.print(f"[bold]{key:>14}[/] {node.get(key) or ''}", markup=True)
        out.print(f"[bold]{'children':>14}[/] {len(node['children'])}", markup=True)

    emit(state, node, human)


@images.command("ls")
@click.argument("image")
@click.argument("path", default="/")
@client_command
async def ls(client: SandtreeClient, state: CliState, image: str, path: str) -> None:
    """List a directory of IMAGE (ls -l style), without starting a sandbox.

    \b
    Example:
      sandtree images ls tag:busybox /etc
    """
    uuid = await client.resolve_image(image)
    if state.json:
        emit(state, await client.list_dir(uuid, path), lambda: None)
    else:
        click.echo(await client.list_dir_text(uuid, path), nl=False)


@images.command("cat")
@click.argument("image")
@click.argument("path")
@client_command
async def cat(client: SandtreeClient, state: CliState, image: str, path: str) -> None:
    """Print a file of IMAGE.

    \b
    Example:
      sandtree images cat tag:busybox /etc/os-release
    """
    uuid = await client.resolve_image(image)
    async for chunk in client.download(uuid, path):
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()


@images.command("download")
@click.argument("image")
@click.argument("path")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Where to write [default: the name of PATH, here].")  # fmt: skip
@click.option("--executable", "-x", is_flag=True, help="Make the downloaded file executable.")
@client_command
async def download(
    client: SandtreeClient,
    state: CliState,
    image: str,
    path: str,
    output: Path | None,
    executable: bool,
) -> None:
    """Copy a file or a directory out of IMAGE.

    \b
    Example:
      sandtree images download tag:build /app/dist/tool -o ./tool -x
      sandtree images download tag:build /app/dist -o ./dist
    """
    uuid = await client.resolve_image(image)
    listing_path = path.rstrip("/") or "/"
    parent, _, name = listing_path.rpartition("/")
    entries = (await client.list_dir(uuid, parent or "/")).get("files", [])
    entry = next((e for e in entries if e.get("path") == name), None)
    is_dir = listing_path == "/" or bool(entry and entry.get("is_dir"))
    target = output or Path(name or "root")
    if is_dir:
        buf = io.BytesIO()
        async for chunk in client.archive(uuid, listing_path):
            buf.write(chunk)
        buf.seek(0)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(target.parent if output is None else target, filter="data")
        size = buf.getbuffer().nbytes
    else:
        tmp = target.with_name(f".{target.name}.part")
        size = 0
        with tmp.open("wb") as f:
            async for chunk in client.download(uuid, listing_path):
                f.write(chunk)
                size += len(chunk)
        if executable:
            os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    data = {"image": uuid, "path": path, "destination": str(target), "bytes": size,
            "directory": is_dir}  # fmt: skip
    emit(state, data, lambda: out.print(f"{path} → {target} ({size} bytes)"))


@images.command("grep")
@click.argument("image")
@click.argument("pattern")
@click.argument("paths", nargs=-1)
@click.option("--glob", "-g", default=None, help="Only files matching this glob.")
@click.option("-i", "ignore_case", is_flag=True, help="Case-insensitive.")
@click.option("--max-total", default=1000, show_default=True)
@client_command
async def grep(
    client: SandtreeClient,
    state: CliState,
    image: str,
    pattern: str,
    paths: tuple[str, ...],
    glob: str | None,
    ignore_case: bool,
    max_total: int,
) -> None:
    """Search IMAGE's files for PATTERN (a regex) without a sandbox.

    \b
    Example:
      sandtree images grep tag:busybox root /etc
    """
    uuid = await client.resolve_image(image)
    found = await client.grep(
        uuid, pattern=pattern, path=list(paths) or None, glob=glob, max_total=max_total,
        case="insensitive" if ignore_case else None,
    )  # fmt: skip

    def human() -> None:
        for m in found.get("matches", []):
            out.print(f"[magenta]{m['path']}[/]:[green]{m['line_number']}[/]:"
                      f"{str(m.get('line_text', '')).rstrip()}", markup=True)  # fmt: skip
        if found.get("truncated"):
            err_console.print("(more matches: raise --max-total)")

    emit(state, found, human)


@images.command("diff")
@click.argument("image")
@click.argument("against", required=False)
@client_command
async def diff(client: SandtreeClient, state: CliState, image: str, against: str | None) -> None:
    """What IMAGE added, changed and deleted, against its parent or AGAINST.

    \b
    Example:
      sandtree images diff tag:after tag:before
    """
    other = await client.resolve_image(against) if against else None
    changes = await client.diff(await client.resolve_image(image), other)

    def human() -> None:
        for key, mark, style in (("added", "+", "green"), ("changed", "~", "yellow"),
                                 ("deleted", "-", "red")):  # fmt: skip
            for path in changes.get(key, []):
                out.print(f"[{style}]{mark} {path}[/]", markup=True)

    emit(state, changes, human)


@images.command("lineage")
@click.argument("image")
@click.option("--depth", default=3, show_default=True, help="Levels of children to draw.")
@client_command
async def lineage(client: SandtreeClient, state: CliState, image: str, depth: int) -> None:
    """Draw IMAGE's family as a tree from its root, with the command that made each image.

    \b
    Example:
      sandtree images lineage tag:busybox
    """
    uuid = await client.resolve_image(image)
    tree = await client.lineage(uuid)
    root = tree["root"]

    async def grow(node: dict[str, Any], branch: Tree, level: int) -> dict[str, Any]:
        sub = await client.lineage(node["uuid"])
        out_node = {**node, "children": []}
        for child in sub.get("children", []):
            label = _label(child, uuid)
            twig = branch.add(label)
            if level < depth:
                out_node["children"].append(await grow(child, twig, level + 1))
            else:
                out_node["children"].append({**child, "children": "…"})
        return out_node

    drawing = Tree(_label(root, uuid))
    data = await grow(root, drawing, 1)
    emit(state, data, lambda: out.print(drawing))


def _label(node: dict[str, Any], current: str) -> str:
    tag = f" [cyan]{node['tag']}[/]" if node.get("tag") else ""
    here = " [bold green]◀[/]" if node["uuid"] == current else ""
    command = str(node.get("command") or "")
    return f"[yellow]{node['uuid'][:8]}[/]{tag} {command[:60]}{here}"
