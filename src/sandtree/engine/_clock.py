"""Timestamps in one format everywhere: ISO 8601, UTC, microseconds."""

from __future__ import annotations

import datetime

__all__ = ["now_iso", "parse_iso"]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def parse_iso(value: str) -> datetime.datetime:
    """Parse an ISO 8601 timestamp; naive ones are taken as UTC."""
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC)
