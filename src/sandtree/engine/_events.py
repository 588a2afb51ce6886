"""Operation event logs: append-only, followed live while the operation runs, re-read after.

While an operation is live its events sit in memory (so followers get them at once) and are
written to the metadata store in small batches; when it ends the rest is flushed and the
in-memory copy is dropped. Stream events (stdout/stderr/stdin) stop being recorded once the
log passes its size cap; service events always are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sandtree.engine._clock import now_iso
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import OperationEvent

__all__ = ["EventHub", "EventLog"]

_STREAM_TYPES = frozenset({"stdout", "stderr", "stdin"})
_FLUSH_EVERY = 0.1


class EventLog:
    """The live log of one operation."""

    def __init__(self, operation: str, store: MetadataStore, *, cap_bytes: int) -> None:
        self.operation = operation
        self._store = store
        self._events: list[OperationEvent] = []
        self._pending: list[OperationEvent] = []
        # Followers park on this future; any new event (or close) resolves it.
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self._next_id = 1
        self._bytes = 0
        self._cap = cap_bytes
        self._capped = False
        self._flusher: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def emit(self, type: str, data: Mapping[str, Any], *, spid: int | None = 0) -> None:
        """Append an event (``spid=None`` for operation-scoped events like ``completion``)."""
        if self._closed:
            return
        if type in _STREAM_TYPES:
            if self._capped:
                return
            size = len(str(data.get("value", "")))
            if self._bytes + size > self._cap:
                self._capped = True
                self._append("size_cap", {"limit_bytes": self._cap, "file_size": self._bytes}, 0)
                return
            self._bytes += size
        self._append(type, data, spid)

    def _append(self, type: str, data: Mapping[str, Any], spid: int | None) -> None:
        event = OperationEvent(
            id=self._next_id, ts=now_iso(), type=type, data=dict(data), spid=spid
        )
        self._next_id += 1
        self._events.append(event)
        self._pending.append(event)
        self._notify()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    def _notify(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = None

    async def _flush_soon(self) -> None:
        await asyncio.sleep(_FLUSH_EVERY)  # batching window, not a wait for state
        self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._store.append_events(self.operation, pending)

    async def close(self) -> None:
        """Flush everything and wake followers so they finish."""
        self._closed = True
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        self.flush()
        self._notify()

    async def follow(self, *, after: int = 0) -> AsyncIterator[OperationEvent]:
        index = 0
        while True:
            while index < len(self._events):
                event = self._events[index]
                index += 1
                if event.id > after:
                    yield event
            if self._closed:
                return
            if self._wakeup is None:
                self._wakeup = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._wakeup)


class EventHub:
    """Finds an operation's log, live or stored."""

    def __init__(self, store: MetadataStore, *, cap_bytes: int) -> None:
        self._store = store
        self._cap = cap_bytes
        self._live: dict[str, EventLog] = {}

    def open(self, operation: str) -> EventLog:
        log = EventLog(operation, self._store, cap_bytes=self._cap)
        self._live[operation] = log
        return log

    async def close(self, operation: str) -> None:
        log = self._live.pop(operation, None)
        if log is not None:
            await log.close()

    def live(self, operation: str) -> EventLog | None:
        """The open log of a running operation, or None once it has ended."""
        return self._live.get(operation)

    async def follow(
        self, operation: str, *, after: int = 0, follow: bool = True
    ) -> AsyncIterator[OperationEvent]:
        """Events after id ``after``; with ``follow`` keep going until the operation ends."""
        log = self._live.get(operation)
        if log is None or not follow:
            if log is not None:
                log.flush()
            for event in self._store.events(operation, after=after):
                yield event
            return
        async for event in log.follow(after=after):
            yield event
