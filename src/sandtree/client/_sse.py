"""Reading a server-sent event stream: frames out of lines, as the SSE spec splits them."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["Event", "Frame", "parse_frames"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Frame:
    """One dispatched SSE frame: its ``id``, ``event`` name and joined ``data`` lines."""

    id: str | None
    event: str
    data: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """One entry of an operation's event log (``OperationEvent`` of the API)."""

    id: int
    type: str
    data: dict[str, Any]
    spid: int | None = None
    ts: str = ""

    @classmethod
    def from_frame(cls, frame: Frame) -> Event:
        body = json.loads(frame.data)
        return cls(
            id=int(body.get("id", frame.id or 0)),
            type=str(body.get("type", frame.event)),
            data=body.get("data") if isinstance(body.get("data"), dict) else {},
            spid=body.get("spid"),
            ts=str(body.get("ts", "")),
        )

    def raw(self) -> bytes:
        """A stdout/stderr/stdin event's bytes (join chunks before decoding them as text)."""
        value = str(self.data.get("value", ""))
        if self.data.get("encoding") == "base64":
            return base64.b64decode(value)
        return value.encode("utf-8", "surrogateescape")


async def parse_frames(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    """Frames from a stream's lines; comments (keepalives) are skipped."""
    event, last_id = "message", None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield Frame(id=last_id, event=event, data="\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            last_id = value
    if data:
        yield Frame(id=last_id, event=event, data="\n".join(data))
