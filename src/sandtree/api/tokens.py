"""``/v1/whoami``: what the caller's token may do."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._tokens import PERMISSIONS, TokenRecord
from sandtree.engine import Engine

__all__ = ["routes"]


async def whoami(request: Request) -> Response:
    token: TokenRecord = request.state.token
    engine: Engine = request.app.state.engine
    expires = token.expires_at
    return JSONResponse(
        {
            "token_uuid": token.uuid,
            "token_expiration": int(expires.timestamp()) if expires is not None else None,
            "permissions": {p: p in token.permissions for p in PERMISSIONS},
            "limits": dict(token.limits),
            "operations_stat": {},
            # Ours (SandtreeWhoAmIFields in /v1/openapi.json): the contract's WhoAmIResponse
            # allows additional properties.
            "namespace": token.namespace,
            "expires_at": expires.isoformat() if expires is not None else None,
            "cgroup_mode": engine.cgroups().mode,
        }
    )


routes = [Route("/whoami", whoami, methods=["GET"])]
