"""``sandtree images``: list, tag, import with a progress bar, and read images without a
sandbox (inspect, ls, cat, download, grep, diff, lineage as a tree)."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.tree import Tree

from sandtree.client import SandtreeClient
from sandtree.errors import InvalidRequestError

from ._common import (
    CliState,
    cancel_on_interrupt,
    client_command,
    emit,
    err_console,
    escape,
    out,
    uuid_table,
)

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
    table = uuid_table("tag", "created")
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
    # The answer shows one tag per image (the API's Image), not necessarily the one just set.
    emit(state, row, lambda: out.print(f"{row['uuid']} tagged {escape(tag)}"))


@images.command("untag")
@click.argument("image")
@click.argument("tag", required=False)
@client_command
async def untag(client: SandtreeClient, state: CliState, image: str, tag: str | None) -> None:
    """Remove TAG from IMAGE. Without TAG, IMAGE named as tag:NAME loses just NAME, and
    IMAGE named by its UUID loses every tag.

    \b
    Example:
      sandtree images untag tag:myproj/deps:1
      sandtree images untag 3f6c… myproj/deps:1
    """
    uuid = await client.resolve_image(image)
    if tag is None and image.startswith("tag:"):
        tag = image.removeprefix("tag:")
    await client.remove_tag(uuid, tag)
    what = escape(tag) if tag else "every tag"
    emit(state, {"uuid": uuid, "removed": tag}, lambda: out.print(f"{uuid} untagged {what}"))


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
        # Ctrl-C stops the import on the server too (nothing half-imported stays).
        async with cancel_on_interrupt(client, op_id):
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
            err_console.print(f"[red]{done.get('status')}:[/] {escape(str(done.get('error')))}",
                              markup=True)  # fmt: skip

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
            value = node.get(key)
            out.print(f"[bold]{key:>14}[/] {escape('' if value is None else str(value))}",
                      markup=True)  # fmt: skip
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
    """Copy a file or a directory out of IMAGE; a directory's content lands in --output
    (default: a directory named like it, here). Symlinks are copied as symlinks.

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
        try:
            with tarfile.open(fileobj=buf) as tar:
                members = list(_inside(tar.getmembers(), name))
                tar.extractall(target, members=members, filter=_copy_symlinks)
        except tarfile.TarError as exc:
            raise InvalidRequestError(f"cannot unpack {path} into {target}: {exc}") from exc
        size = buf.getbuffer().nbytes
    else:
        tmp = target.with_name(f".{target.name}.part")
        size = 0
        try:
            with tmp.open("wb") as f:
                async for chunk in client.download(uuid, listing_path):
                    f.write(chunk)
                    size += len(chunk)
            if executable:
                os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    data = {"image": uuid, "path": path, "destination": str(target), "bytes": size,
            "directory": is_dir}  # fmt: skip
    emit(state, data, lambda: out.print(f"{path} → {target} ({size} bytes)"))


def _inside(members: list[tarfile.TarInfo], top: str) -> Iterator[tarfile.TarInfo]:
    """The archive's members below its top directory ``top`` ("" for the root), renamed
    relative to it: the server's archive of ``/a/b`` holds ``b/...``."""

    def relative(name: str) -> str | None:
        name = name.removeprefix("./")
        if top:
            if not name.startswith(f"{top}/"):
                return None
            name = name[len(top) + 1 :]
        return name if name not in ("", ".") else None

    for member in members:
        name = relative(member.name)
        if name is None:
            continue
        if member.islnk():
            link = relative(member.linkname)
            if link is None:
                continue
            yield member.replace(name=name, linkname=link, deep=False)
        else:
            yield member.replace(name=name, deep=False)


def _copy_symlinks(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, except that a symlink pointing anywhere is copied as it is
    (like ``cp -a``); members are still never written through it, outside ``dest``."""
    try:
        return tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        if not member.issym():
            raise
        # Everything else as the data filter has it (ownership dropped, mode bits cleared).
        vetted = tarfile.data_filter(member.replace(linkname=".", deep=False), dest)
        return vetted.replace(linkname=member.linkname, deep=False)


_MORE = "(more matches: raise --max-total)"
_GREP_STOPPED = {
    "deadline": "(the search ran out of time: narrow it with paths or --glob)",
    "max_bytes": "(the search read as much as one search may: narrow it with paths or --glob)",
    "max_output": "(the answer reached its size limit: narrow the search or the pattern)",
}


@images.command("grep")
@click.argument("image")
@click.argument("pattern")
@click.argument("paths", nargs=-1)
@click.option("--glob", "-g", default=None, help="Only files matching this glob.")
@click.option("-i", "ignore_case", is_flag=True, help="Case-insensitive.")
@click.option("-F", "--fixed-strings", is_flag=True, help="PATTERN is literal text, not a regex.")
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
    fixed_strings: bool,
    max_total: int,
) -> None:
    """Search IMAGE's files for PATTERN (an RE2 regex, like ripgrep's) without a sandbox.

    \b
    Example:
      sandtree images grep tag:busybox root /etc
    """
    uuid = await client.resolve_image(image)
    found = await client.grep(
        uuid, pattern=pattern, path=list(paths) or None, glob=glob, max_total=max_total,
        case="insensitive" if ignore_case else None,
        fixed_strings="true" if fixed_strings else None,
    )  # fmt: skip

    def human() -> None:
        for m in found.get("matches", []):
            text = escape(str(m.get("line_text", "")).rstrip())
            out.print(f"[magenta]{escape(m['path'])}[/]:[green]{m['line_number']}[/]:{text}",
                      markup=True)  # fmt: skip
        if found.get("truncated"):
            err_console.print(_GREP_STOPPED.get(str(found.get("truncated_reason")), _MORE))

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
                out.print(f"[{style}]{mark} {escape(path)}[/]", markup=True)

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
    tag = f" [cyan]{escape(node['tag'])}[/]" if node.get("tag") else ""
    here = " [bold green]◀[/]" if node["uuid"] == current else ""
    command = str(node.get("command") or "")
    return f"[yellow]{node['uuid'][:8]}[/]{tag} {escape(command[:60])}{here}"
