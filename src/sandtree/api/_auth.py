"""Bearer-token authentication and per-route permission checks."""

from __future__ import annotations

import collections
import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sandtree.api._errors import error_response
from sandtree.api._tokens import TokenRecord, TokenStore
from sandtree.errors import ForbiddenError, UnauthorizedError

__all__ = ["AuthMiddleware", "require"]

#: Paths anyone may read: the contract, and the slash-adding redirects of /v1/inspect.
_OPEN_PATHS = re.compile(r"^/v1/(openapi\.json|inspect|inspect/[^/]+)$")


class AuthMiddleware:
    """Rejects ``/v1`` requests without a live ``Authorization: Bearer`` token (401: none,
    unknown, revoked or expired) and hands the token to routes as ``request.state.token``.

    It runs before any route reads a body, so an unauthenticated body is never read. A token
    may have at most ``max_requests`` requests in flight (an open event stream counts): past
    that it gets a 429, so one tenant's open connections cannot take every slot the server
    has for the others.
    """

    def __init__(self, app: ASGIApp, *, tokens: TokenStore, max_requests: int) -> None:
        self.app = app
        self.tokens = tokens
        self.max_requests = max_requests
        self._in_flight: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _OPEN_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            message = (
                "no token: send 'Authorization: Bearer <token>' (`sandtree token create` makes "
                "one; `sandtree serve` printed the admin token on first start)"
            )
            await error_response(401, message)(scope, receive, send)
            return
        try:
            token = self.tokens.authenticate(secret.strip())
        except UnauthorizedError as exc:  # unknown, revoked or expired: the message says which
            await error_response(exc.status, exc.message)(scope, receive, send)
            return
        if self._in_flight[token.uuid] >= self.max_requests:
            message = (
                f"this token already has {self.max_requests} requests in flight (the server's "
                "max_requests_per_token); wait for some to end (close event streams you no "
                "longer follow), then retry"
            )
            await error_response(429, message)(scope, receive, send)
            return
        scope.setdefault("state", {})["token"] = token
        self._in_flight[token.uuid] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight[token.uuid] -= 1
            if not self._in_flight[token.uuid]:
                del self._in_flight[token.uuid]


def require(request: Request, permission: str) -> TokenRecord:
    """The caller's token, which must hold ``permission`` (else 403)."""
    token: TokenRecord = request.state.token
    if permission not in token.permissions:
        raise ForbiddenError(
            f"this token lacks the '{permission}' permission; ask for a token that has it "
            f"(`sandtree token create --permission {permission}`)"
        )
    return token
