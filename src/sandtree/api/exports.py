"""Our extensions for moving images out: an OCI archive download and a push to a registry."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import json_body
from sandtree.api._streaming import thread_chunks
from sandtree.api.images import image_in_path, registry_fields
from sandtree.engine import Engine

__all__ = ["routes"]

_PUSH_EXAMPLE = '{"registry": {"url": "docker://registry.example:5000/team/app:v1"}}'


async def export_image(request: Request) -> Response:
    """``GET /v1/images/{uuid}/export``: the image as an OCI archive (a tar of an OCI layout)."""
    require(request, "list")
    engine: Engine = request.app.state.engine
    image = image_in_path(request)
    name = (image.tags[0] if image.tags else image.uuid).replace("/", "_").replace(":", "_")
    headers = {"Content-Disposition": f'attachment; filename="{name}.oci.tar"'}
    if request.method == "HEAD":
        return Response(status_code=200, media_type="application/x-tar", headers=headers)
    return StreamingResponse(
        thread_chunks(lambda out: engine.export_image(image, out)),
        media_type="application/x-tar",
        headers=headers,
    )


async def push_image(request: Request) -> Response:
    """``POST /v1/images/{uuid}/push``: upload the image to a registry; answers its digest."""
    # Its own permission: a push sends the image's bytes out of the server.
    token = require(request, "push")
    engine: Engine = request.app.state.engine
    image = image_in_path(request)
    body = await json_body(request, example=_PUSH_EXAMPLE)
    url, credentials = registry_fields(body, _PUSH_EXAMPLE)
    digest = await engine.push_image(image, url, credentials=credentials, namespace=token.namespace)
    return JSONResponse({"image": image.uuid, "url": url, "digest": digest})


routes = [
    Route("/images/{uuid}/export", export_image, methods=["GET", "HEAD"]),
    Route("/images/{uuid}/push", push_image, methods=["POST"]),
]
