"""Query-parameter and JSON-body parsing shared by the routes, with errors that say what to
send."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from starlette.requests import Request

from sandtree.api._body import read_body, settings_of
from sandtree.errors import InvalidRequestError

__all__ = ["int_param", "json_body", "time_param"]

_INTERVAL = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}, not {value}")
    return value


def time_param(request: Request, name: str) -> str | None:
    """``since``/``until``: an ISO 8601 time, a Unix timestamp or an interval (``15m``)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    now = datetime.datetime.now(datetime.UTC)
    match = _INTERVAL.match(raw)
    try:
        if match:
            moment = now - datetime.timedelta(seconds=int(match[1]) * _UNITS[match[2]])
        elif re.fullmatch(r"\d+(\.\d+)?", raw):
            moment = datetime.datetime.fromtimestamp(float(raw), datetime.UTC)
        else:
            moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequestError(
            f"{name}={raw!r} is not a time: send an ISO 8601 time "
            "('2025-01-01T12:00:00+00:00'), a Unix timestamp or an interval like '15m' or '2h'"
        ) from None
    return moment.astimezone(datetime.UTC).isoformat(timespec="microseconds")


async def json_body(
    request: Request, *, example: str, limit: int | None = None, too_large: str | None = None
) -> Any:
    """The request's JSON body; ``example`` shows what to send.

    At most ``limit`` bytes (the server's ``max_json_bytes`` unless given; larger gets a 413
    saying ``too_large``, by default: upload large inputs as files). Routes call this after
    their permission check, so a caller who may not use the route never has its body read.
    """
    cap = settings_of(request).max_json_bytes if limit is None else limit
    message = too_large or (
        f"the request body is larger than {cap} bytes (the server's max_json_bytes); upload "
        "large inputs with POST /v1/files (or /v1/files/batch) and place them with 'files'"
    )
    raw = await read_body(request, limit=cap, too_large=message)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise InvalidRequestError(f"send a JSON body like {example}") from None
