"""``sandtree demo``: the engine end to end on this machine, no server needed."""

from __future__ import annotations

import asyncio
import base64
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.tree import Tree

from sandtree.config import Settings
from sandtree.engine import Engine, ImageRecord, RunSpec, default_runtimes
from sandtree.engine.runtime import enter_private_mount_namespace
from sandtree.errors import SandtreeError
from sandtree.testing import build_busybox_rootfs

__all__ = ["demo"]


def _text(stream: dict[str, object]) -> str:
    value = str(stream["value"])
    if stream["encoding"] == "base64":
        return base64.b64decode(value).decode("utf-8", "replace")
    return value


async def _run(
    engine: Engine, console: Console, image: str, command: str, *, keep: bool, isolation: str
) -> ImageRecord | None:
    spec = RunSpec(
        image=image, command=command, shell=True, disposable=not keep, isolation=isolation
    )
    op = await engine.spawn(spec)
    async for event in engine.follow_events(op):
        if event.type in ("stdout", "stderr"):
            console.print(
                _text(dict(event.data)), end="", style="dim" if event.type == "stderr" else ""
            )
    done = await engine.wait_operation(op)
    if done.error:
        raise click.ClickException(done.error)
    child = done.result_image
    console.print(
        f"[green]✓[/] {command!r} → exit {done.result['state']['exit_code']}"  # type: ignore[index]
        + (f", image {child}" if keep and child else "")
    )
    return engine.resolve_image(child) if keep and child else None


async def _demo(data_dir: Path, scratch: Path, isolation: str) -> None:
    console = Console()
    settings = Settings(data_dir=data_dir)
    async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
        rootfs = build_busybox_rootfs(scratch / "rootfs")
        base = await engine.import_local(rootfs, tag="busybox:demo")
        console.print(f"imported a busybox root filesystem as {base.uuid} (tag busybox:demo)")
        await _run(
            engine,
            console,
            base.uuid,
            "id; uname -r; cat /proc/self/uid_map",
            keep=False,
            isolation=isolation,
        )
        a = await _run(
            engine, console, base.uuid, "echo v1 > /root/app.txt", keep=True, isolation=isolation
        )
        assert a is not None
        b = await _run(
            engine,
            console,
            a.uuid,
            "echo v2 > /root/app.txt; rm /etc/hostname",
            keep=True,
            isolation=isolation,
        )
        c = await _run(
            engine,
            console,
            a.uuid,
            "mkdir -p /srv && echo branch > /srv/b",
            keep=True,
            isolation=isolation,
        )
        assert b is not None
        assert c is not None
        await _run(
            engine,
            console,
            b.uuid,
            "cat /root/app.txt; ls /etc/hostname || true",
            keep=False,
            isolation=isolation,
        )
        tree = Tree(f"{base.uuid[:8]} [bold]busybox:demo[/]")
        node = tree.add(f"{a.uuid[:8]} {a.command}")
        for child in engine.lineage(a).children:
            node.add(f"{child.uuid[:8]} {child.command}")
        console.print(tree)
        diff = await engine.diff(b)
        console.print(
            f"diff {b.uuid[:8]} vs parent: added={diff.added} changed={diff.changed} "
            f"deleted={diff.deleted}"
        )


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to keep images (default: a fresh temporary directory).",
)
@click.option(
    "--isolation",
    type=click.Choice(["container", "gvisor"]),
    default="container",
    show_default=True,
    help="Sandbox tier to run in.",
)
def demo(data_dir: Path | None, isolation: str) -> None:
    """Import a tiny image, run in sandboxes, keep and branch results, show the lineage.

    \b
    Example:
      sudo sandtree demo --isolation gvisor
    """
    if not enter_private_mount_namespace():
        raise click.ClickException("could not enter a private mount namespace; run as root")
    with tempfile.TemporaryDirectory(prefix="sandtree-demo-") as scratch:
        try:
            asyncio.run(_demo(data_dir or Path(scratch) / "data", Path(scratch), isolation))
        except SandtreeError as exc:
            raise click.ClickException(str(exc)) from exc
