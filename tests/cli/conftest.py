"""Fixtures of the CLI tests: a real ``sandtree serve`` with busybox imported, and the CLI
run the way a user runs it, as a child process with the server named in its environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from clikit import Sandtree

from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import ServerProcess


@pytest.fixture
def busybox_server(tmp_path: Path, busybox_rootfs: Path) -> Iterator[ServerProcess]:
    """A started server whose store already has ``busybox:latest`` (imported before it ran).

    A plain fixture (the import runs its own event loop), so sync tests can use it too.
    """
    settings = Settings(data_dir=tmp_path / "data")

    async def import_busybox() -> None:
        async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
            await engine.import_local(busybox_rootfs, tag="busybox:latest")

    anyio.run(import_busybox)
    with ServerProcess(tmp_path / "data", tmp_path / "config") as srv:
        yield srv


@pytest.fixture
def sandtree(busybox_server: ServerProcess, tmp_path: Path) -> Sandtree:
    """The CLI, pointed at a server with ``busybox:latest``."""
    return Sandtree(busybox_server, tmp_path / "cli")
