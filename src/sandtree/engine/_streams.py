"""Process output as operations keep it: capped per stream, in the event log as it comes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from sandtree.engine._events import EventLog
from sandtree.engine.types import StreamOutput

__all__ = ["Collector", "encode_stream"]


def encode_stream(data: bytes) -> tuple[str, str]:
    """``(value, encoding)``: ``ascii`` when printable (plus newline, CR, tab), else base64."""
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data):
        return data.decode("ascii"), "ascii"
    return base64.b64encode(data).decode("ascii"), "base64"


class Collector:
    """Keeps the first ``cap`` bytes of a stream for the result and the event log."""

    def __init__(self, name: str, cap: int, log: EventLog, *, spid: int = 1) -> None:
        self.name = name
        self.spid = spid
        self.cap = cap
        self.log = log
        self.data = bytearray()
        self.dropped = 0

    async def pump(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            room = self.cap - len(self.data)
            keep = chunk[: max(room, 0)]
            self.dropped += len(chunk) - len(keep)
            if keep:
                self.data += keep
                value, encoding = encode_stream(bytes(keep))
                self.log.emit(
                    self.name,
                    {"value": value, "encoding": encoding, "truncated": False},
                    spid=self.spid,
                )

    def finish(self) -> StreamOutput:
        if self.dropped:
            self.log.emit(
                "truncated",
                {
                    "stream": self.name,
                    "bytes_emitted": len(self.data),
                    "bytes_dropped": self.dropped,
                },
                spid=self.spid,
            )
        return StreamOutput(data=bytes(self.data), truncated=self.dropped > 0)
