"""``/v1/operations``: list, get and cancel."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import int_param, time_param
from sandtree.engine import (
    Engine,
    OperationKind,
    OperationQuery,
    OperationRecord,
    OperationStatus,
)
from sandtree.errors import InvalidRequestError, OperationNotFoundError

__all__ = ["operation_json", "routes"]

#: What a client polling a live operation should wait before asking again (seconds).
_RETRY_AFTER = "1"


def summary_json(op: OperationRecord) -> dict[str, Any]:
    """The API's ``OperationSummary``."""
    return {
        "uuid": op.uuid,
        "kind": str(op.kind),
        "status": str(op.status),
        "error": op.error,
        "created_at": op.created_at,
        "duration": op.duration,
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
        "result": {"image": op.result_image, "tag": None},
    }


def _operation(request: Request, permission: str) -> tuple[Engine, OperationRecord]:
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
    _, op = _operation(request, "list")
    headers = {} if op.status.terminal else {"Retry-After": _RETRY_AFTER}
    return JSONResponse(operation_json(op), headers=headers)


async def cancel_operation(request: Request) -> Response:
    engine, op = _operation(request, "cancel")
    await engine.cancel_operation(op)
    return Response(status_code=202)


routes = [
    Route("/operations", list_operations, methods=["GET"]),
    Route("/operations/{operation_id}", get_operation, methods=["GET"]),
    Route("/operations/{operation_id}", cancel_operation, methods=["DELETE"]),
]
