"""The REST API v1 (wire-compatible with the ConTree API): routes parse, delegate to the
engine and map errors; nothing here runs sandboxes itself."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount

from sandtree.api import (
    directory_states,
    exports,
    files,
    images,
    inspect,
    instances,
    lineage,
    openapi,
    operations,
    subprocesses,
    tokens,
)
from sandtree.api._auth import AuthMiddleware
from sandtree.api._errors import exception_handlers
from sandtree.api._tokens import PERMISSIONS, TokenRecord, TokenStore
from sandtree.engine import Engine

__all__ = ["PERMISSIONS", "TokenRecord", "TokenStore", "create_app"]


def create_app(
    engine: Engine, *, tokens_store: TokenStore, manage_engine: bool = True
) -> Starlette:
    """The ASGI app over ``engine``.

    Args:
        engine: the engine to serve.
        tokens_store: where bearer tokens are checked.
        manage_engine: start the engine with the app and close it on shutdown.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.close()

    app = Starlette(
        routes=[
            Mount(
                "/v1",
                routes=[
                    *directory_states.routes,
                    *exports.routes,
                    *files.routes,
                    *images.routes,
                    *inspect.routes,
                    *lineage.routes,
                    *openapi.routes,
                    *instances.routes,
                    *operations.routes,
                    *subprocesses.routes,
                    *tokens.routes,
                ],
            )
        ],
        middleware=[
            Middleware(
                AuthMiddleware,
                tokens=tokens_store,
                max_requests=engine.settings.max_requests_per_token,
            )
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.in_flight = {}
    return app
