"""``/v1/files``: content-addressed uploads (streamed, stored once per sha256)."""

from __future__ import annotations

import asyncio
import re
import tarfile
import tempfile
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._body import body_chunks
from sandtree.api._params import int_param, json_body, time_param
from sandtree.engine import Engine, FileRecord
from sandtree.errors import FileNotFoundInStoreError, InvalidRequestError, PayloadTooLargeError

__all__ = ["file_json", "routes"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
#: Digests per lookup: 10,000 of them fit the default JSON cap (1 MiB) with room to spare.
_MAX_LOOKUP = 10_000


def file_json(record: FileRecord) -> dict[str, Any]:
    """The API's ``File`` (a superset of ``FileResponse``)."""
    return {
        "uuid": record.uuid,
        "sha256": record.sha256,
        "size": record.size,
        "created_at": record.created_at,
        "updated_at": record.created_at,
    }


def _too_large(limit: int, what: str) -> str:
    return (
        f"{what} is larger than {limit} bytes (the server's max_upload_bytes); split it into "
        "smaller files, or ask the operator to raise SANDTREE_MAX_UPLOAD_BYTES"
    )


async def upload_file(request: Request) -> Response:
    token = require(request, "upload")
    engine: Engine = request.app.state.engine
    limit = engine.settings.max_upload_bytes
    # Chunk by chunk: large files never sit in memory. Past the cap the stream raises, and
    # the engine drops what it had written of it: nothing half-stored stays behind.
    chunks = body_chunks(request, limit=limit, too_large=_too_large(limit, "the upload"))
    record = await engine.upload_file(chunks, namespace=token.namespace)
    return JSONResponse(file_json(record), status_code=201)


def _check_members(tar_file: IO[bytes], cap: int) -> None:
    """Refuse a tar of more than ``cap`` members before any is stored; headers only (the
    spool is seekable, so the members' data is skipped, not read)."""
    try:
        with tarfile.open(fileobj=tar_file, mode="r:") as tar:
            for count, _ in enumerate(iter(tar.next, None), start=1):
                if count > cap:
                    raise PayloadTooLargeError(
                        f"the tar has more than {cap} members (the server's "
                        "max_upload_entries); send the files in several batches"
                    )
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidRequestError(
            f"the body is not a tar archive ({exc}); send an uncompressed tar of the files"
        ) from exc
    finally:
        tar_file.seek(0)


async def upload_files_tar(request: Request) -> Response:
    """Ours: many files in one request, as an uncompressed tar; answers each member's file."""
    token = require(request, "upload")
    engine: Engine = request.app.state.engine
    limit = engine.settings.max_upload_bytes
    # The tar is spooled (to disk past 64 MiB) so it can be read by a thread as a file, and
    # whole before anything is stored: a batch past a cap stores none of its files.
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        too_large = _too_large(limit, "the batch")
        async for chunk in body_chunks(request, limit=limit, too_large=too_large):
            spool.write(chunk)
        spool.seek(0)
        await asyncio.to_thread(_check_members, spool, engine.settings.max_upload_entries)
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
        raise PayloadTooLargeError(f"look up at most {_MAX_LOOKUP} digests per request")
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
