"""``/v1/operations/{id}/subprocesses``: more processes in a running instance, their results,
signals and stdin."""

from __future__ import annotations

import signal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import json_body
from sandtree.api.instances import parse_exec_spec, parse_stdin
from sandtree.api.operations import find_operation
from sandtree.engine import OperationRecord
from sandtree.errors import InvalidRequestError

__all__ = ["routes"]


def _spawn_permission(op: OperationRecord) -> str:
    # The permission follows the parent instance, as the spec says.
    return "spawn_disposable" if op.request.get("disposable") else "spawn"


def _spid(request: Request) -> int:
    raw = request.path_params["spid"]
    try:
        spid = int(raw)
    except ValueError:
        spid = 0
    if spid < 1:
        raise InvalidRequestError(
            f"spid must be a positive integer (1 is the main process), not {raw!r}"
        )
    return spid


def _signal(raw: str | None) -> int:
    if raw is None or raw == "":
        return int(signal.SIGKILL)
    if raw.isdigit():
        return int(raw)
    name = raw.upper() if raw.upper().startswith("SIG") else f"SIG{raw.upper()}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidRequestError(
            f"unknown signal {raw!r}; send a number (15) or a name (TERM, SIGTERM)"
        ) from None


async def create_subprocess(request: Request) -> Response:
    engine, op = find_operation(request, "list")
    require(request, _spawn_permission(op))
    body = await json_body(request, example='{"command": "ls -l /", "shell": true}')
    fields: dict[str, Any] = parse_exec_spec(body)
    spid = await engine.exec_process(op, **fields)
    return JSONResponse(
        {"spid": spid},
        status_code=201,
        headers={"Location": f"/v1/operations/{op.uuid}/subprocesses/{spid}"},
    )


async def subprocess_result(request: Request) -> Response:
    engine, op = find_operation(request, "list")
    return JSONResponse(engine.process_result(op, _spid(request)))


async def kill_subprocess(request: Request) -> Response:
    engine, op = find_operation(request, "list")
    require(request, _spawn_permission(op))
    await engine.signal_process(op, _spid(request), _signal(request.query_params.get("signal")))
    return Response(status_code=204)


async def write_stdin(request: Request) -> Response:
    engine, op = find_operation(request, "list")
    require(request, _spawn_permission(op))
    body = await json_body(request, example='{"value": "hello\\n", "close": false}')
    data = parse_stdin(body)
    close = body.get("close", True) if isinstance(body, dict) else True
    if not isinstance(close, bool):
        raise InvalidRequestError("'close' must be true or false")
    await engine.write_stdin(op, _spid(request), data, close=close)
    return Response(status_code=204)


routes = [
    Route("/operations/{operation_id}/subprocesses", create_subprocess, methods=["POST"]),
    Route("/operations/{operation_id}/subprocesses/{spid}", subprocess_result, methods=["GET"]),
    Route("/operations/{operation_id}/subprocesses/{spid}", kill_subprocess, methods=["DELETE"]),
    Route("/operations/{operation_id}/subprocesses/{spid}/stdin", write_stdin, methods=["POST"]),
]
