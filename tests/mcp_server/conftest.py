"""An MCP client talking to our MCP server in process, whose API client talks to the app in
process, on the fake runtime; and, for the end-to-end tests only, a real ``sandtree serve``
(fixtures are lazy: no other test starts it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from sandtree.api import TokenStore, create_app
from sandtree.client import SandtreeClient
from sandtree.engine import Engine, ImageRecord
from sandtree.mcp import McpContext, build_server
from sandtree.testing import ServerProcess

from .agentkit import McpAgent
from .e2ekit import BUSYBOX, import_busybox


class Agent(McpAgent):
    """An agent on the in-process stack, with the engine and the MCP context at hand."""

    def __init__(self, session: Client, engine: Engine, mc: McpContext) -> None:
        super().__init__(session)
        self.engine = engine
        self.mc = mc


@pytest.fixture
async def agent(engine: Engine, tmp_path: Path) -> AsyncIterator[Agent]:
    tokens = TokenStore(tmp_path / "tokens.db")
    # Room for the tests that start thirty runs at once (the default allows 16 in flight).
    _, secret = tokens.create(
        name="admin",
        created_at="2026-01-01T00:00:00+00:00",
        limits={"instance_max_concurrency": 64},
    )
    app = create_app(engine, tokens_store=tokens, manage_engine=False)
    transport = httpx.ASGITransport(app=app)
    async with SandtreeClient("http://sandtree", secret, transport=transport) as client:
        mc = McpContext(client=client, state_dir=tmp_path / "mcp-state", token=secret)
        async with Client(build_server(mc)) as session:
            yield Agent(session, engine, mc)
        mc.close()
    tokens.close()


@pytest.fixture
async def base(engine: Engine, rootfs: Path) -> ImageRecord:
    """The mini root filesystem imported as ``tag:base:1``."""
    return await engine.import_local(rootfs, tag="base:1")


# -- a real server, for the end-to-end tests (module-scoped: one per test module) ----------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[ServerProcess]:
    """One real server for the module, its store holding ``busybox:latest``."""
    tmp = tmp_path_factory.mktemp("serve")
    import_busybox(tmp / "data", busybox_rootfs)
    with ServerProcess(tmp / "data", tmp / "config") as srv:
        yield srv


@pytest.fixture(scope="module")
def busybox_uuid(server: ServerProcess) -> str:
    async def main() -> str:
        async with SandtreeClient(server.url, server.admin_token) as client:
            return await client.resolve_image(BUSYBOX)

    return anyio.run(main)
