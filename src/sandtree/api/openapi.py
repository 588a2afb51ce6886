"""``GET /v1/openapi.json``: the ConTree API v1 contract plus sandtree's own extensions.

The contract ships with the package (``contree-api-v1.json``, Apache-2.0, see
``LICENSE-contree-api``); extensions are added here and marked ``x-sandtree: true``.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["openapi_document", "routes"]

_UUID = {"$ref": "#/components/schemas/UUIDSchema"}
_IMAGE_PATH = {"name": "imageUUID", "in": "path", "required": True, "schema": _UUID}
_ERRORS = {
    code: {"$ref": f"#/components/responses/{name}"}
    for code, name in (("400", "BadRequest"), ("401", "Unauthorized"), ("404", "NotFound"))
}
_NODE = {
    "type": "object",
    "x-sandtree": True,
    "properties": {
        "uuid": _UUID,
        "tag": {"type": "string", "nullable": True},
        "created_at": {"type": "string"},
        "operation_uuid": {"type": "string", "nullable": True},
        "depth": {"type": "integer"},
        "command": {"type": "string", "nullable": True},
    },
}
_NODE_REF = {"$ref": "#/components/schemas/SandtreeImageNode"}
#: What ``GET /whoami`` answers beyond the contract's WhoAmIResponse (which allows more).
_WHOAMI_FIELDS = {
    "type": "object",
    "x-sandtree": True,
    "x-sandtree-extends": "#/components/schemas/WhoAmIResponse",
    "description": "Properties sandtree adds to WhoAmIResponse (GET /whoami).",
    "properties": {
        "namespace": {"type": "string", "description": "The namespace the token sees."},
        "expires_at": {
            "type": "string",
            "nullable": True,
            "description": "When the token expires, ISO 8601 UTC (token_expiration as a "
            "time); null if never.",
            "example": "2026-01-01T00:00:00+00:00",
        },
    },
}
_EXTENSIONS: dict[str, Any] = {
    "/images/{imageUUID}/lineage": {
        "get": {
            "summary": "An image's place in the lineage tree (sandtree extension)",
            "operationId": "sandtreeImageLineage",
            "tags": ["images"],
            "x-sandtree": True,
            "parameters": [_IMAGE_PATH],
            "responses": {
                "200": {
                    "description": "The image, its parent, children, ancestors (nearest first), "
                    "root and depth; each with the command that made it",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "image": _NODE_REF,
                            "parent": {"allOf": [_NODE_REF], "nullable": True},
                            "children": {"type": "array", "items": _NODE_REF},
                            "ancestors": {"type": "array", "items": _NODE_REF},
                            "root": _NODE_REF,
                            "depth": {"type": "integer"},
                        },
                    }}},
                },
                **_ERRORS,
            },
        }
    },
    "/images/{imageUUID}/diff": {
        "get": {
            "summary": "Paths added, changed and deleted in an image (sandtree extension)",
            "operationId": "sandtreeImageDiff",
            "tags": ["images"],
            "x-sandtree": True,
            "parameters": [
                _IMAGE_PATH,
                {"name": "against", "in": "query", "required": False, "schema": _UUID,
                 "description": "The image to compare with; its parent when omitted."},
            ],
            "responses": {
                "200": {
                    "description": "The differences",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "image": _UUID,
                            "against": {"type": "string", "nullable": True},
                            "added": {"type": "array", "items": {"type": "string"}},
                            "changed": {"type": "array", "items": {"type": "string"}},
                            "deleted": {"type": "array", "items": {"type": "string"}},
                        },
                    }}},
                },
                **_ERRORS,
            },
        }
    },
}  # fmt: skip


@functools.cache
def _contract() -> dict[str, Any]:
    text = resources.files("sandtree.api").joinpath("contree-api-v1.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def openapi_document() -> dict[str, Any]:
    """The served document: the contract, served from this host, plus our extensions."""
    document = copy.deepcopy(_contract())
    document["servers"] = [{"url": "/v1", "description": "this sandtree server"}]
    document["paths"].update(copy.deepcopy(_EXTENSIONS))
    document["components"]["schemas"]["SandtreeImageNode"] = copy.deepcopy(_NODE)
    document["components"]["schemas"]["SandtreeWhoAmIFields"] = copy.deepcopy(_WHOAMI_FIELDS)
    document["info"]["x-sandtree-extensions"] = sorted(_EXTENSIONS)
    return document


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
