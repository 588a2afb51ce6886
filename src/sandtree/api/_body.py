"""Reading request bodies with a size cap and a deadline.

Every route that reads a body reads it through here, after its permission check: a body
larger than the route's cap is refused (413) from its ``Content-Length`` before a byte is
read, or as soon as it grows past the cap; a body that arrives too slowly is cut off (408).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request

from sandtree.config import Settings
from sandtree.errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError

__all__ = ["MIN_BODY_RATE", "body_chunks", "read_body", "settings_of"]

#: Bytes per second a body must keep arriving at, past ``body_timeout``: an upload may take
#: as long as it needs at this rate, a drip of a byte now and then may not.
MIN_BODY_RATE = 64 * 1024


def settings_of(request: Request) -> Settings:
    """The server's settings (the engine's, read once at start)."""
    settings: Settings = request.app.state.engine.settings
    return settings


def _check_declared_length(request: Request, limit: int, too_large: str) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.strip().isdigit():
        raise InvalidRequestError(f"Content-Length must be a number of bytes, not {declared!r}")
    if int(declared) > limit:
        raise PayloadTooLargeError(too_large)


async def body_chunks(request: Request, *, limit: int, too_large: str) -> AsyncIterator[bytes]:
    """The body, chunk by chunk, at most ``limit`` bytes (else 413 saying ``too_large``).

    Only the time spent waiting for the client counts against its deadline: each wait lasts
    at most ``body_timeout``, and all of them together at most ``body_timeout`` plus the
    bytes received over ``MIN_BODY_RATE``. The time the caller takes with a chunk (writing
    it to disk) is the server's, not the client's.
    """
    _check_declared_length(request, limit, too_large)
    timeout = settings_of(request).body_timeout
    loop = asyncio.get_running_loop()
    chunks = request.stream().__aiter__()
    received, waited = 0, 0.0
    while True:
        budget = min(timeout, timeout + received / MIN_BODY_RATE - waited)
        started = loop.time()
        try:
            if budget <= 0:
                raise TimeoutError
            async with asyncio.timeout(budget):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body arrived too slowly (after {received} bytes); the server "
                f"waits {timeout:g} s for a body, longer only while it keeps arriving at "
                f"{MIN_BODY_RATE // 1024} KiB/s; send it again, whole"
            ) from None
        waited += loop.time() - started
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(too_large)
        if chunk:
            yield chunk


async def read_body(request: Request, *, limit: int, too_large: str) -> bytes:
    """The whole body, bounded as ``body_chunks`` bounds it."""
    return b"".join(
        [chunk async for chunk in body_chunks(request, limit=limit, too_large=too_large)]
    )
