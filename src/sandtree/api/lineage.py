"""Our extensions under ``/v1``: an image's lineage and what changed between images."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api.images import image_json, parse_uuid
from sandtree.engine import Engine, ImageRecord
from sandtree.engine.types import PUBLIC_NAMESPACE

__all__ = ["routes"]


def _node(image: ImageRecord, namespace: str) -> dict[str, Any]:
    # The engine leaves out what the caller may not see; the command is shown only for its
    # own and published images all the same, in case a caller passes an unscoped tree.
    shown = image.namespace in (namespace, PUBLIC_NAMESPACE)
    return {
        **image_json(image, namespace),
        "depth": image.depth,
        "command": image.command if shown else None,
    }


def _resolve(request: Request, raw: str) -> tuple[Engine, ImageRecord, str]:
    token = require(request, "list")
    engine: Engine = request.app.state.engine
    image = engine.resolve_image(parse_uuid(raw, "image"), namespaces=(token.namespace,))
    return engine, image, token.namespace


async def lineage(request: Request) -> Response:
    engine, image, namespace = _resolve(request, request.path_params["uuid"])
    tree = engine.lineage(image, namespace=namespace)
    return JSONResponse(
        {
            "image": _node(tree.image, namespace),
            "parent": _node(tree.parent, namespace) if tree.parent else None,
            "children": [_node(c, namespace) for c in tree.children],
            "ancestors": [_node(a, namespace) for a in tree.ancestors],
            "root": _node(tree.root, namespace),
            "depth": tree.depth,
        }
    )


async def diff(request: Request) -> Response:
    engine, image, _ = _resolve(request, request.path_params["uuid"])
    against = request.query_params.get("against")
    other = _resolve(request, against)[1] if against else None
    changes = await engine.diff(image, other)
    return JSONResponse(
        {
            "image": image.uuid,
            "against": other.uuid if other else image.parent,
            "added": changes.added,
            "changed": changes.changed,
            "deleted": changes.deleted,
        }
    )


routes = [
    Route("/images/{uuid}/lineage", lineage, methods=["GET"]),
    Route("/images/{uuid}/diff", diff, methods=["GET"]),
]
