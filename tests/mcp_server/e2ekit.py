"""What the end-to-end MCP tests share (``test_e2e.py``, ``test_reference_parity.py``):
their marks, the busybox image, the project an agent syncs, and our MCP server over stdio.

The real ``sandtree serve`` they run against is the module-scoped ``server`` fixture of
``conftest.py``."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import ServerProcess

from .agentkit import McpAgent as Agent

#: Every end-to-end test's marks: a real ``sandtree serve`` needs root and crun.
REAL_SERVER = [
    pytest.mark.isolation,
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="a real sandtree serve needs root"),
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]
BUSYBOX = "tag:busybox:latest"
#: Excludes as users write them: names that must match at any depth.
EXCLUDES = ["__pycache__", ".git", "node_modules", "*.pyc"]
#: The excludes of the spec's workflow (no "*.pyc"): the names alone must do.
NAMES = ["__pycache__", ".git", "node_modules"]
#: What ``make_project`` leaves after EXCLUDES, as ``find /app -type f | sort`` prints it.
SYNCED = [
    "/app/.gitignore",
    "/app/main.sh",
    "/app/pkg/data.txt",
    "/app/pkg/sub/keep.txt",
    "/app/run.sh",
    "/app/web/app.js",
]


def import_busybox(data_dir: Path, rootfs: Path) -> None:
    async def main() -> None:
        settings = Settings(data_dir=data_dir)
        async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
            await engine.import_local(rootfs, tag="busybox:latest")

    anyio.run(main)


def ours_stdio(server: ServerProcess, state_dir: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandtree", "mcp", "--url", server.url, "--token", server.admin_token,
              "--state-dir", str(state_dir)],
    )  # fmt: skip


@contextlib.asynccontextmanager
async def stdio_agent(params: StdioServerParameters, log: Path, name: str) -> AsyncIterator[Agent]:
    """The server ``params`` starts, over stdio; its stderr goes to ``log``."""
    with log.open("a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield Agent(client, name)


def make_project(root: Path) -> Path:
    """A project with what agents exclude at several depths, and an executable script."""
    files = {
        "main.sh": "echo main ran; cat /app/pkg/data.txt\n",
        "run.sh": "#!/bin/sh\necho run.sh ran\n",
        "pkg/data.txt": "data v1\n",
        "pkg/stale.pyc": "compiled",
        "pkg/__pycache__/mod.cpython-311.pyc": "compiled",
        "pkg/sub/keep.txt": "kept\n",
        "pkg/sub/__pycache__/deep.pyc": "compiled",
        "web/app.js": "console.log(1)\n",
        "web/node_modules/dep/index.js": "module.exports = 1\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".gitignore": "__pycache__/\n",
        "__pycache__/top.pyc": "compiled",
    }
    write_files(root, files)
    (root / "run.sh").chmod(0o755)
    return root


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write ``files`` (a relative path → its text) under ``root``, making directories."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
