"""``/v1/files``: content-addressed uploads (streamed, stored once per sha256)."""

from __future__ import annotations

import re
import tempfile
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import int_param, json_body, time_param
from sandtree.engine import Engine, FileRecord
from sandtree.errors import FileNotFoundInStoreError, InvalidRequestError

__all__ = ["file_json", "routes"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_LOOKUP = 20_000


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


async def upload_files_tar(request: Request) -> Response:
    """Ours: many files in one request, as an uncompressed tar; answers each member's file."""
    token = require(request, "upload")
    engine: Engine = request.app.state.engine
    # The tar is spooled (to disk past 64 MiB) so it can be read by a thread as a file.
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        spool.seek(0)
        stored = await engine.upload_files_tar(spool, namespace=token.namespace)  # type: ignore[arg-type]
    files = [{"name": name, **file_json(record)} for name, record in stored]
    return JSONResponse({"files": files}, status_code=201)


async def lookup_files(request: Request) -> Response:
    """Ours: which of these contents (sha256) the caller has uploaded already."""
    token = require(request, "list")
    engine: Engine = request.app.state.engine
    body = await json_body(request, example='{"sha256": ["<64 hex digits>", ...]}')
    shas = body.get("sha256") if isinstance(body, dict) else None
    if not isinstance(shas, list) or not all(isinstance(s, str) for s in shas):
        raise InvalidRequestError('send {"sha256": [...]}: a list of sha256 hex digests')
    if len(shas) > _MAX_LOOKUP:
        raise InvalidRequestError(f"look up at most {_MAX_LOOKUP} digests per request")
    valid = [s for s in shas if _SHA256.match(s)]
    found = engine.find_files(valid, namespace=token.namespace)
    return JSONResponse({"files": {r.sha256: file_json(r) for r in found}})


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
    Route("/files/batch", upload_files_tar, methods=["POST"]),
    Route("/files/lookup", lookup_files, methods=["POST"]),
    # Starlette answers HEAD with the GET route, minus the body: 200 or 404 as the spec wants.
    Route("/files/{sha256}", get_file, methods=["GET"]),
]
