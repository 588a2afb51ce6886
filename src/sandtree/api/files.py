"""``/v1/files``: content-addressed uploads (streamed, stored once per sha256)."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import int_param, time_param
from sandtree.engine import Engine, FileRecord
from sandtree.errors import FileNotFoundInStoreError

__all__ = ["file_json", "routes"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def file_json(record: FileRecord) -> dict[str, Any]:
    """The API's ``File`` (a superset of ``FileResponse``)."""
    return {
        "uuid": record.uuid,
        "sha256": record.sha256,
        "size": record.size,
        "created_at": record.created_at,
        "updated_at": record.created_at,
    }


async def upload_file(request: Request) -> Response:
    token = require(request, "upload")
    engine: Engine = request.app.state.engine
    # request.stream() hands the body over chunk by chunk: large files never sit in memory.
    record = await engine.upload_file(request.stream(), namespace=token.namespace)
    return JSONResponse(file_json(record), status_code=201)


async def list_files(request: Request) -> Response:
    token = require(request, "list")
    engine: Engine = request.app.state.engine
    records = engine.list_files(
        namespace=token.namespace,
        limit=int_param(request, "limit", 100, low=1, high=1000),
        offset=int_param(request, "offset", 0, low=0, high=2**31),
        since=time_param(request, "since"),
        until=time_param(request, "until"),
    )
    return JSONResponse({"files": [file_json(r) for r in records]})


def _record(request: Request) -> FileRecord:
    token = require(request, "list")
    sha = request.path_params["sha256"]
    if not _SHA256.match(sha):
        # A 404, not a 400: the contract documents no 400 here, and no such file exists.
        raise FileNotFoundInStoreError(
            f"{sha!r} is not a sha256 (64 hexadecimal characters), so no file has it"
        )
    engine: Engine = request.app.state.engine
    return engine.get_file(sha.lower(), namespace=token.namespace)


async def get_file(request: Request) -> Response:
    return JSONResponse(file_json(_record(request)))


routes = [
    Route("/files", upload_file, methods=["POST"]),
    Route("/files", list_files, methods=["GET"]),
    # Starlette answers HEAD with the GET route, minus the body: 200 or 404 as the spec wants.
    Route("/files/{sha256}", get_file, methods=["GET"]),
]
