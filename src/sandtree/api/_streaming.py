"""Streaming what a blocking writer produces (a tar, an OCI archive) as a response body."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, cast

__all__ = ["thread_chunks"]

_CHUNK = 1 << 20


class _QueueWriter:
    """A write-only file whose chunks a thread hands to the event loop through a queue."""

    def __init__(self, sink: queue.Queue[bytes | BaseException | None]) -> None:
        self._sink = sink
        self._buffer = bytearray()
        self.closed = threading.Event()

    def write(self, data: bytes) -> int:
        if self.closed.is_set():
            raise BrokenPipeError("the client went away")
        self._buffer += data
        if len(self._buffer) >= _CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._sink.put(bytes(self._buffer))
            self._buffer.clear()


async def thread_chunks(produce: Callable[[BinaryIO], None]) -> AsyncIterator[bytes]:
    """Run ``produce(out)`` in a thread and yield what it writes to ``out``, in order.

    The queue is bounded, so the writer waits for a slow client instead of filling memory;
    if the client goes away, the writer's next write raises ``BrokenPipeError``.
    """
    sink: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    writer = _QueueWriter(sink)

    def run() -> None:
        try:
            produce(cast(BinaryIO, writer))
            writer.flush()
            sink.put(None)
        except BaseException as exc:  # delivered to the response below
            sink.put(exc)

    thread = threading.Thread(target=run, name="sandtree-stream", daemon=True)
    thread.start()
    try:
        while (item := await asyncio.to_thread(sink.get)) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        writer.closed.set()
        while thread.is_alive():  # unblock a writer stuck on a full queue
            try:
                sink.get_nowait()
            except queue.Empty:
                await asyncio.to_thread(thread.join, 0.05)
