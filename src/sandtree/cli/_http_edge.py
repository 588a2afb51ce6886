"""The HTTP edge of ``sandtree serve`` and ``sandtree mcp --http``: uvicorn, guarded against
clients that hold connections without finishing their requests (slowloris).

uvicorn bounds the size of a request's headers but not the time they take: its keep-alive
timer is reset by every byte received, and a connection that never sends a request has no
timer at all. ``GuardedH11Protocol`` adds, per connection:

- a header deadline: a request's line and headers must be complete ``header_timeout``
  seconds after its first byte (or after the connection opened); else a 408 and close;
- a linger deadline: when the app answered before reading the whole body (a 401, 403 or
  413), the rest of the body is read and dropped for at most ``body_timeout`` seconds;
- a connection cap: past ``max_connections`` open connections, an idle one (waiting for a
  request, as slow-header ones are) is closed to make room: first those never served a
  request, the longest idle first; only when every connection has a request in flight is the
  new one refused with a 503. A client that was served (a kept-alive pool) goes last.

The time a route takes to read a body is bounded in the API (``sandtree.api._body``), where
the app's own waits can be told from the client's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sandtree.config import Settings

__all__ = ["GuardedH11Protocol", "edge_options"]

logger = logging.getLogger("sandtree.http")

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 40\r\n\r\nthe request headers arrived too slowly\r\n"
)
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 41\r\n\r\nevery connection is busy; retry shortly\r\n"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and linger deadlines and an evicting connection
    cap; ``edge_options`` makes a subclass with a server's settings."""

    header_timeout: ClassVar[float] = 10.0
    linger_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind = ""
        self._idle_since = self.loop.time()
        self._served = False

    # -- the states a connection is in ---------------------------------------------------

    def _waiting_for_request(self) -> bool:
        """No request in flight: before the first one, or between two (keep-alive)."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _arm(self, seconds: float, kind: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)
        self._deadline_kind = kind

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_kind = None, ""

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        logger.warning(
            "closing a connection from %s: %s took too long", self.client, self._deadline_kind
        )
        if self._deadline_kind == "request headers":
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()

    # -- uvicorn's hooks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_idle():
            logger.warning("refusing a connection: %d are open, all busy", len(self.connections))
            transport.write(_BUSY_ANSWER)
            transport.close()
            return
        self._arm(self.header_timeout, "request headers")

    def _evict_idle(self) -> bool:
        """Close an idle connection, never-served ones first; False if none is idle."""
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedH11Protocol)
            and not c.transport.is_closing()
            and c._waiting_for_request()
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: (c._served, c._idle_since))
        oldest._disarm()
        oldest.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._waiting_for_request():
            # The first byte of a request on a kept-alive connection starts its clock.
            self._arm(self.header_timeout, "request headers")
        super().data_received(data)
        if self._deadline_kind == "request headers" and self.conn.their_state is not h11.IDLE:
            self._disarm()  # the headers are in; the app bounds how long its body takes
        elif self._deadline_kind == "the rest of an unread body" and (
            self.conn.their_state is not h11.SEND_BODY
        ):
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._idle_since, self._served = self.loop.time(), True
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            # Answered before the body was read (401, 403, 413): uvicorn reads the rest and
            # drops it, for as long as the client keeps sending; we stop that after a while.
            self._arm(self.linger_timeout, "the rest of an unread body")


def edge_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments that apply ``settings``' edge limits."""
    protocol = type(
        "SandtreeH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": settings.header_timeout,
            "linger_timeout": settings.body_timeout,
            "max_connections": settings.max_connections,
        },
    )
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": 5,
        # The connection cap is the protocol's (it closes idle connections to make room,
        # where uvicorn's would answer 503 while idle ones hold every slot); uvicorn's own
        # limit stays as a backstop on requests in flight.
        "limit_concurrency": settings.max_connections * 2,
        "backlog": max(128, min(2048, settings.max_connections)),
    }
