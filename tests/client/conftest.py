"""A client wired to the app in process, on the fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandtree.api import TokenStore, create_app
from sandtree.client import SandtreeClient
from sandtree.engine import Engine


@pytest.fixture
async def client(engine: Engine, tmp_path: Path) -> AsyncIterator[SandtreeClient]:
    tokens = TokenStore(tmp_path / "tokens.db")
    _, secret = tokens.create(name="admin", created_at="2026-01-01T00:00:00+00:00")
    app = create_app(engine, tokens_store=tokens, manage_engine=False)
    async with SandtreeClient(
        "http://sandtree", secret, transport=httpx.ASGITransport(app=app)
    ) as c:
        yield c
    tokens.close()
