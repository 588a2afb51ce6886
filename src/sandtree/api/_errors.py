"""Errors as the API answers them: ``{"error": message, "status": code}``."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandtree.errors import SandtreeError

__all__ = ["error_response", "exception_handlers"]

logger = logging.getLogger(__name__)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _sandtree_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandtreeError)
    response = error_response(exc.status, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 408:
        # The client is too slow to keep serving: the connection ends with this answer.
        response.headers["Connection"] = "close"
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}")
    if exc.status_code == 405:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}")
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}; the server log has details")


exception_handlers = {
    SandtreeError: _sandtree_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
