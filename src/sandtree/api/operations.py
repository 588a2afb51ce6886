"""``/v1/operations``: list, get and cancel."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import int_param, time_param
from sandtree.api._sse import sse_frames
from sandtree.engine import (
    Engine,
    OperationKind,
    OperationQuery,
    OperationRecord,
    OperationStatus,
)
from sandtree.engine._clock import parse_iso
from sandtree.errors import ForbiddenError, InvalidRequestError, OperationNotFoundError

__all__ = ["find_operation", "operation_json", "routes"]

#: What a client polling a live operation should wait before asking again (seconds).
_RETRY_AFTER = "1"


def _duration(op: OperationRecord) -> float:
    # Nullable in the spec, but contree-sdk parses it as a float on every poll: report the
    # time so far while the operation is live.
    if op.duration is not None:
        return op.duration
    elapsed = datetime.datetime.now(datetime.UTC) - parse_iso(op.started_at or op.created_at)
    return max(elapsed.total_seconds(), 0.0)


def summary_json(op: OperationRecord) -> dict[str, Any]:
    """The API's ``OperationSummary``."""
    return {
        "uuid": op.uuid,
        "kind": str(op.kind),
        "status": str(op.status),
        "error": op.error,
        "created_at": op.created_at,
        "duration": _duration(op),
        "image_size": op.image_size if op.status == OperationStatus.SUCCESS else None,
        "consumed_cpu": op.consumed_cpu,
        "consumed_memory": op.consumed_memory,
        "image_uuid": op.image if op.kind == OperationKind.INSTANCE else None,
        "result_image_uuid": op.result_image if op.status == OperationStatus.SUCCESS else None,
    }


def operation_json(op: OperationRecord) -> dict[str, Any]:
    """The API's ``OperationResponse``: the summary, the request with its result, and the
    result image."""
    metadata: dict[str, Any] = dict(op.request)
    if op.kind == OperationKind.INSTANCE:
        metadata["image"] = op.image
        metadata["result"] = dict(op.result) if op.result is not None else None
    return {
        **summary_json(op),
        "metadata": metadata,
        "result": {
            "image": op.result_image if op.status == OperationStatus.SUCCESS else None,
            "tag": (op.result or {}).get("tag") if op.kind == OperationKind.IMAGE_IMPORT else None,
        },
    }


def find_operation(request: Request, permission: str) -> tuple[Engine, OperationRecord]:
    """The operation named in the path, visible to the caller's token holding ``permission``."""
    token = require(request, permission)
    engine: Engine = request.app.state.engine
    raw = request.path_params["operation_id"]
    try:
        op_id = str(uuid.UUID(raw))
    except ValueError:
        raise OperationNotFoundError(
            f"{raw!r} is not an operation id; list_operations shows the ids you can use"
        ) from None
    return engine, engine.get_operation(op_id, namespaces=(token.namespace,))


async def list_operations(request: Request) -> Response:
    token = require(request, "list")
    params = request.query_params
    try:
        status = OperationStatus(params["status"]) if params.get("status") else None
        kind = OperationKind(params["kind"]) if params.get("kind") else None
    except ValueError:
        raise InvalidRequestError(
            "status must be one of PENDING, ASSIGNED, EXECUTING, SUCCESS, FAILED, CANCELLED; "
            "kind one of instance, image_import"
        ) from None
    engine: Engine = request.app.state.engine
    ops = engine.list_operations(
        OperationQuery(
            namespaces=(token.namespace,),
            limit=int_param(request, "limit", 100, low=1, high=1000),
            offset=int_param(request, "offset", 0, low=0, high=2**31),
            status=status,
            kind=kind,
            since=time_param(request, "since"),
            until=time_param(request, "until"),
        )
    )
    return JSONResponse([summary_json(op) for op in ops])


async def get_operation(request: Request) -> Response:
    _, op = find_operation(request, "list")
    headers = {} if op.status.terminal else {"Retry-After": _RETRY_AFTER}
    return JSONResponse(operation_json(op), headers=headers)


async def cancel_operation(request: Request) -> Response:
    engine, op = find_operation(request, "cancel")
    await engine.cancel_operation(op)
    return Response(status_code=202)


def _flag(request: Request, name: str) -> bool:
    """HTTP-flag booleans: ``?x`` and ``?x=1`` enable, ``?x=0`` and absence disable."""
    if name not in request.query_params:
        return False
    raw = request.query_params[name]
    if raw not in ("", "0", "1"):
        raise InvalidRequestError(f"{name} must be empty, 0 or 1, not {raw!r}")
    return raw != "0"


def _event_filters(request: Request) -> tuple[int, int | None]:
    raw_since = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
    raw_spid = request.query_params.get("spid")
    try:
        since = int(raw_since)
        spid = int(raw_spid) if raw_spid not in (None, "") else None
    except ValueError:
        raise InvalidRequestError("since, spid and Last-Event-Id must be integers") from None
    return since, spid


async def operation_events(request: Request) -> Response:
    engine, op = find_operation(request, "list")
    follow = _flag(request, "follow")
    if follow and not {"spawn", "spawn_disposable"} & request.state.token.permissions:
        raise ForbiddenError(
            "follow=1 needs the 'spawn' or 'spawn_disposable' permission; "
            "without it, read the log so far with follow=0"
        )
    since, spid = _event_filters(request)
    events = engine.follow_events(op, after=since, follow=follow)
    return StreamingResponse(
        sse_frames(events, spid=spid),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


routes = [
    Route("/operations", list_operations, methods=["GET"]),
    Route("/operations/{operation_id}/events", operation_events, methods=["GET"]),
    Route("/operations/{operation_id}", get_operation, methods=["GET"]),
    Route("/operations/{operation_id}", cancel_operation, methods=["DELETE"]),
]
