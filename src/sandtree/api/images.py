"""``/v1/images``: list, import, tag and untag."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._limits import check_concurrency, check_timeout, track
from sandtree.api._params import int_param, json_body, time_param
from sandtree.engine import Engine, ImageQuery, ImageRecord
from sandtree.errors import (
    ImageNotFoundError,
    InvalidRequestError,
    LimitExceededError,
    TooManyRequestsError,
)

__all__ = ["image_in_path", "image_json", "parse_uuid", "routes"]


def image_json(image: ImageRecord, namespace: str, *, tag: str | None = None) -> dict[str, Any]:
    """The API's ``Image``: ``tag`` (the one just set or matched), else its first tag the
    caller sees (``image`` comes scoped from the engine: the caller's tags, then public
    ones), and the operation that made it when the caller may see that operation."""
    own = image.namespace == namespace
    return {
        "uuid": image.uuid,
        "tag": tag if tag is not None else (image.tags[0] if image.tags else None),
        "created_at": image.created_at,
        "operation_uuid": image.operation if own else None,
    }


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def parse_uuid(raw: str, what: str) -> str:
    """``raw`` (a query value) as a canonical UUID, or a 400 naming ``what`` it should be."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidRequestError(f"{what} {raw!r} is not a UUID") from None


def image_in_path(request: Request) -> ImageRecord:
    """The image named in the path, visible to the caller; anything else is a 404 (the
    contract documents no 400 for a malformed path id)."""
    raw = request.path_params["uuid"]
    try:
        image_id = str(uuid.UUID(raw))
    except ValueError:
        raise ImageNotFoundError(f"{raw!r} is not an image UUID; list_images shows them") from None
    namespace = request.state.token.namespace
    return _engine(request).resolve_image(image_id, namespaces=(namespace,))


def _tagged(request: Request) -> bool | None:
    if "tagged" not in request.query_params:
        return None
    raw = request.query_params["tagged"]
    return None if raw == "0" else True


async def list_images(request: Request) -> Response:
    token = require(request, "list")
    raw_uuid = request.query_params.get("uuid")
    query = ImageQuery(
        namespaces=(token.namespace,),
        limit=int_param(request, "limit", 100, low=1, high=1000),
        offset=int_param(request, "offset", 0, low=0, high=2**31),
        tagged=True if request.query_params.get("tag") else _tagged(request),
        tag_prefix=request.query_params.get("tag") or None,
        uuid=parse_uuid(raw_uuid, "uuid") if raw_uuid else None,
        since=time_param(request, "since"),
        until=time_param(request, "until"),
    )
    images = _engine(request).list_images(query)
    prefix = query.tag_prefix
    return JSONResponse(
        {"images": [image_json(i, token.namespace, tag=_matched(i, prefix)) for i in images]}
    )


def _matched(image: ImageRecord, prefix: str | None) -> str | None:
    """The tag that ``?tag=prefix`` matched (the caller's own first), or None unfiltered."""
    if prefix is None:
        return None
    return next((t for t in image.tags if t.startswith(prefix)), None)


async def tag_image(request: Request) -> Response:
    token = require(request, "set_image_tag")
    engine = _engine(request)
    image = image_in_path(request)
    body = await json_body(request, example='{"tag": "busybox:latest"}')
    tag = body.get("tag") if isinstance(body, dict) else None
    if not isinstance(tag, str) or not tag:
        raise InvalidRequestError('send a JSON body like {"tag": "busybox:latest"}')
    tagged = engine.tag_image(image, tag, namespace=token.namespace)
    return JSONResponse(image_json(tagged, token.namespace, tag=tag))


async def untag_image(request: Request) -> Response:
    token = require(request, "set_image_tag")
    engine = _engine(request)
    image = image_in_path(request)
    engine.untag_image(image, request.query_params.get("tag") or None, namespace=token.namespace)
    return Response(status_code=204)


_IMPORT_EXAMPLE = '{"registry": {"url": "docker://alpine:3.20"}, "tag": "alpine:3.20"}'


def registry_fields(body: Any, example: str) -> tuple[str, dict[str, Any] | None]:
    """``registry.url`` and ``registry.credentials`` of an import or push body, checked."""
    registry = body.get("registry") if isinstance(body, dict) else None
    url = registry.get("url") if isinstance(registry, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequestError(f"'registry.url' is required, e.g. {example}")
    credentials = registry.get("credentials") if isinstance(registry, dict) else None
    if credentials is not None and not isinstance(credentials, dict):
        raise InvalidRequestError(
            "'registry.credentials' must be an object with 'username' and 'password'"
        )
    return url, credentials


def _import_fields(body: Any) -> tuple[str, dict[str, Any] | None, str | None, int, str | None]:
    if not isinstance(body, dict):
        raise InvalidRequestError(f"send a JSON object like {_IMPORT_EXAMPLE}")
    url, credentials = registry_fields(body, _IMPORT_EXAMPLE)
    tag = body.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag):
        raise InvalidRequestError("'tag' must be a non-empty string such as 'alpine:3.20', or null")
    timeout = body.get("timeout", 300)
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise InvalidRequestError(f"'timeout' must be a whole number of seconds, not {timeout!r}")
    platform = body.get("platform")
    if platform is not None and not isinstance(platform, str):
        raise InvalidRequestError("'platform' must be a string such as 'linux/arm64'")
    return url, credentials or None, tag, timeout, platform


async def import_image(request: Request) -> Response:
    token = require(request, "import")
    engine = _engine(request)
    body = await json_body(request, example=_IMPORT_EXAMPLE)
    url, credentials, tag, timeout, platform = _import_fields(body)
    timeout = check_timeout(
        timeout,
        asked=body.get("timeout") is not None,
        limit=token.limits.get("images_import_max_timeout"),
        name="import limit",
    )
    limit = token.limits.get("images_import_max_concurrency")
    try:
        check_concurrency(request, engine, token.uuid, limit, kind="imports")
    except TooManyRequestsError as exc:
        raise LimitExceededError(exc.message) from None  # the contract has no 429 here
    # What GET /v1/operations/{id} shows as metadata: the request, password masked.
    shown: dict[str, Any] = {"url": url}
    if credentials:
        shown["credentials"] = {"username": credentials.get("username"), "password": "<MASKED>"}
    metadata = {"registry": shown, "tag": tag, "timeout": timeout}
    if platform:
        metadata["platform"] = platform
    op = await engine.import_image(
        url,
        credentials=credentials,
        tag=tag,
        timeout=timeout,
        platform=platform,
        namespace=token.namespace,
        request=metadata,
    )
    track(request, token.uuid, op.uuid, kind="imports")
    return JSONResponse(
        {"uuid": op.uuid}, status_code=201, headers={"Location": f"/v1/operations/{op.uuid}"}
    )


routes = [
    Route("/images", list_images, methods=["GET"]),
    Route("/images/import", import_image, methods=["POST"]),
    Route("/images/{uuid}/tag", tag_image, methods=["PATCH"]),
    Route("/images/{uuid}/tag", untag_image, methods=["DELETE"]),
]
