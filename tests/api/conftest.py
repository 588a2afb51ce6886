"""The API in process: the app over a fake-runtime engine, reached through httpx."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest

from sandtree.api import PERMISSIONS, TokenStore, create_app
from sandtree.engine import Engine
from sandtree.testing import FakeClock


@dataclasses.dataclass
class Api:
    engine: Engine
    tokens: TokenStore
    http: httpx.AsyncClient
    #: A token with every permission in the "default" namespace.
    admin: str
    #: The time the token store judges expiry by; tests move it.
    clock: FakeClock

    def token(
        self,
        *permissions: str,
        namespace: str = "default",
        expires_at: datetime.datetime | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> dict[str, str]:
        """Headers with a new token holding ``permissions`` (all when none are given) and
        ``limits`` (over the defaults)."""
        _, secret = self.tokens.create(
            name="test",
            namespace=namespace,
            permissions=permissions or PERMISSIONS,
            limits=limits,
            created_at="2026-01-01T00:00:00+00:00",
            expires_at=expires_at,
        )
        return {"Authorization": f"Bearer {secret}"}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[Api]:
    clock = FakeClock("2026-01-01T00:00:00+00:00")
    tokens = TokenStore(tmp_path / "tokens.db", clock=clock)
    _, admin = tokens.create(name="admin", created_at="2026-01-01T00:00:00+00:00")
    app = create_app(engine, tokens_store=tokens, manage_engine=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandtree") as http:
        yield Api(engine=engine, tokens=tokens, http=http, admin=admin, clock=clock)
    tokens.close()
