"""``/v1/whoami``: what the caller's token may do."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._tokens import PERMISSIONS, TokenRecord

__all__ = ["routes"]


async def whoami(request: Request) -> Response:
    token: TokenRecord = request.state.token
    return JSONResponse(
        {
            "token_uuid": token.uuid,
            "token_expiration": token.expires_at,
            "permissions": {p: p in token.permissions for p in PERMISSIONS},
            "limits": dict(token.limits),
            "operations_stat": {},
            # Ours: which namespace the token sees.
            "namespace": token.namespace,
        }
    )


routes = [Route("/whoami", whoami, methods=["GET"])]
