"""Server-Sent Events framing for operation event logs, with keepalives while idle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from sandtree.engine import OperationEvent

__all__ = ["KEEPALIVE_SECONDS", "sse_frames"]

logger = logging.getLogger(__name__)

#: An idle stream gets a ``: keepalive`` comment this often, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0

_DONE = object()


def _frame(event: OperationEvent) -> bytes:
    data = json.dumps(event.to_json(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


async def sse_frames(
    events: AsyncIterator[OperationEvent],
    *,
    spid: int | None = None,
    keepalive: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    """Frames for ``events`` (only those of ``spid`` when given), keepalives in between.

    The events are read by a task of their own: waiting on them with a timeout directly
    would close the generator they come from at the first keepalive.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=256)

    async def pump() -> None:
        try:
            async for event in events:
                if spid is None or event.spid == spid:
                    await queue.put(event)
        except Exception as exc:
            logger.exception("event stream failed")
            await queue.put(exc)
        finally:
            await queue.put(_DONE)

    reader = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if item is _DONE:
                return
            if isinstance(item, Exception):
                message = str(item).replace("\n", " ") or type(item).__name__
                yield (
                    ": stream ended with error, retry since last event id\n"
                    f"event: sse_error\ndata: {message}\n\n"
                ).encode()
                return
            assert isinstance(item, OperationEvent)
            yield _frame(item)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
