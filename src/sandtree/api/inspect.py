"""``/v1/inspect``: read an image without starting a sandbox (find by tag, list, download,
archive, grep). Paths resolve inside the image, never on the host (see engine.layers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import int_param
from sandtree.api._streaming import thread_chunks
from sandtree.api.images import image_in_path, image_json
from sandtree.engine import Engine, ImageRecord, format_ls
from sandtree.errors import (
    InvalidRequestError,
    UnprocessableError,
)

__all__ = ["routes"]

_CHUNK = 256 * 1024


def _image(request: Request) -> tuple[Engine, ImageRecord, str]:
    token = require(request, "list")
    engine: Engine = request.app.state.engine
    return engine, image_in_path(request), token.namespace


def _path(request: Request) -> str:
    path = request.query_params.get("path")
    if not path:
        raise InvalidRequestError("send the path inside the image, e.g. ?path=/etc/hosts")
    return path


def _text(request: Request) -> bool:
    return _flag(request, "text")


def _flag(request: Request, name: str) -> bool:
    return name in request.query_params and request.query_params[name] not in ("0", "false")


async def inspect_root(request: Request) -> Response:
    return RedirectResponse("/v1/inspect/", status_code=307)


async def find_by_tag(request: Request) -> Response:
    token = require(request, "list")
    tag = request.query_params.get("tag")
    if not tag:
        raise InvalidRequestError("send the tag to look up, e.g. /v1/inspect/?tag=busybox:latest")
    engine: Engine = request.app.state.engine
    image = engine.resolve_image(f"tag:{tag}", namespaces=(token.namespace,))
    return RedirectResponse(f"/v1/inspect/{image.uuid}/", status_code=302)


async def image_redirect(request: Request) -> Response:
    return RedirectResponse(f"/v1/inspect/{request.path_params['uuid']}/", status_code=307)


async def inspect_image(request: Request) -> Response:
    _, image, namespace = _image(request)
    return JSONResponse(image_json(image, namespace))


async def list_directory(request: Request) -> Response:
    engine, image, _ = _image(request)
    path = request.query_params.get("path") or "/"
    items = await asyncio.to_thread(engine.list_dir, image, path)
    if _text(request):
        return PlainTextResponse(format_ls(items))
    return JSONResponse({"path": path, "files": [item.to_json() for item in items]})


async def download(request: Request) -> Response:
    engine, image, _ = _image(request)
    path = _path(request)
    item = await asyncio.to_thread(engine.stat_path, image, path)
    if not item.is_regular:
        raise UnprocessableError(
            f"{path} is not a regular file; list a directory with /list or fetch it with /archive"
        )
    if request.method == "HEAD":
        return Response(status_code=200, headers={"Content-Length": str(item.size)})
    stream = await asyncio.to_thread(engine.open_file, image, path)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(stream.read, _CHUNK):
                yield chunk
        finally:
            stream.close()

    media = "text/plain; charset=utf-8" if _text(request) else "application/octet-stream"
    return StreamingResponse(chunks(), media_type=media, headers={"Content-Length": str(item.size)})


async def archive(request: Request) -> Response:
    engine, image, _ = _image(request)
    path = _path(request)
    item = await asyncio.to_thread(engine.stat_path, image, path)
    if not (item.is_regular or item.is_dir):
        raise UnprocessableError(f"{path} is neither a regular file nor a directory")
    if request.method == "HEAD":
        return Response(status_code=200)
    name = path.strip("/").replace("/", "_") or "root"
    return StreamingResponse(
        _tar_chunks(engine, image, path),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{name}.tar"'},
    )


async def _tar_chunks(engine: Engine, image: ImageRecord, path: str) -> AsyncIterator[bytes]:
    async for chunk in thread_chunks(lambda out: engine.write_tar(image, path, out)):
        yield chunk


def _grep_options(request: Request) -> dict[str, Any]:
    # The engine checks the patterns, paths and globs (how many, how long, RE2 syntax).
    params = request.query_params
    patterns = params.getlist("pattern")
    if not patterns:
        raise InvalidRequestError("send at least one pattern, e.g. ?pattern=^root")
    has_max_count = params.get("max_count") not in (None, "")
    return {
        "patterns": patterns,
        "paths": params.getlist("path") or ["/"],
        "glob": params.getlist("glob") or None,
        "case": params.get("case", "sensitive"),
        "fixed_strings": _flag(request, "fixed_strings"),
        "max_count": int_param(request, "max_count", 1, low=1, high=10000)
        if has_max_count
        else None,
        "max_total": int_param(request, "max_total", 1000, low=1, high=10000),
        "before": int_param(request, "before", 0, low=0, high=50),
        "after": int_param(request, "after", 0, low=0, high=50),
    }


async def grep(request: Request) -> Response:
    engine, image, namespace = _image(request)
    options = _grep_options(request)
    patterns = options.pop("patterns")
    result = await engine.grep(image, patterns, namespace=namespace, **options)
    return JSONResponse(result.to_json())


routes = [
    Route("/inspect", inspect_root, methods=["GET"]),
    Route("/inspect/", find_by_tag, methods=["GET"]),
    Route("/inspect/{uuid}", image_redirect, methods=["GET"]),
    Route("/inspect/{uuid}/", inspect_image, methods=["GET"]),
    Route("/inspect/{uuid}/list", list_directory, methods=["GET"]),
    Route("/inspect/{uuid}/download", download, methods=["GET", "HEAD"]),
    Route("/inspect/{uuid}/archive", archive, methods=["GET", "HEAD"]),
    Route("/inspect/{uuid}/grep", grep, methods=["GET"]),
]
