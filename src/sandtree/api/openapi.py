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
#: Answers any route that reads a body may give beyond the contract's (``api._body`` and the
#: per-token cap of ``api._auth``); ``openapi_document`` adds them to each operation with a
#: requestBody.
_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_RESPONSES = {
    "SandtreeRequestTimeout": {
        "description": "Request Timeout - The body arrived too slowly: the server waits "
        "body_timeout seconds for it, longer only while it keeps arriving at 64 KiB/s. The "
        "connection is closed; send the request again, whole. (Headers slower than "
        "header_timeout get a text/plain 408 on any route.)",
        "x-sandtree": True,
        "content": {**_ERROR_JSON, "text/plain": {"schema": {"type": "string"}}},
    },
    "SandtreePayloadTooLarge": {
        "description": "Payload Too Large - The body (its Content-Length, or the bytes sent) "
        "is past the route's cap: max_json_bytes for JSON, max_upload_bytes for an upload "
        "or batch; the message says which and what to do instead.",
        "x-sandtree": True,
        "content": _ERROR_JSON,
    },
    "SandtreeTooManyRequests": {
        "description": "Too Many Requests - This token already has max_requests_per_token "
        "requests in flight (open event streams count), or the route's own limit on work at "
        "once is reached (POST /instances: the token's instance_max_concurrency); retry when "
        "some have ended.",
        "x-sandtree": True,
        "content": _ERROR_JSON,
    },
}
_BODY_ERRORS = {
    code: {"$ref": f"#/components/responses/{name}"}
    for code, name in (
        ("408", "SandtreeRequestTimeout"),
        ("413", "SandtreePayloadTooLarge"),
        ("429", "SandtreeTooManyRequests"),
    )
}
#: What sandtree adds to the contract's GET /inspect/{image_uuid}/grep.
_GREP_PARAMETERS = [
    {
        "name": "fixed_strings",
        "in": "query",
        "required": False,
        "x-sandtree": True,
        "description": "Search for the patterns as literal text, not regular expressions "
        "(grep -F). Patterns are RE2 otherwise: no backreferences or lookaround.",
        "schema": {"type": "boolean", "default": False},
    },
]
_GREP_RESPONSES = {
    "429": {
        "description": "Too Many Requests - The server (grep_concurrency) or this namespace "
        "(grep_per_namespace) already runs as many greps as it may, or this token has "
        "max_requests_per_token requests in flight; retry when one has answered.",
        "x-sandtree": True,
        "content": _ERROR_JSON,
    },
}
#: What GET /inspect/{image_uuid}/grep answers beyond the contract's GrepResult.
_GREP_FIELDS = {
    "type": "object",
    "x-sandtree": True,
    "x-sandtree-extends": "#/components/schemas/GrepResult",
    "description": "Properties sandtree adds to GrepResult (GET /inspect/{image_uuid}/grep).",
    "properties": {
        "truncated_reason": {
            "type": "string",
            "nullable": True,
            "enum": ["max_total", "deadline", "max_bytes", "max_output", "cancelled", None],
            "description": "Why the search ended early (null when `truncated` is false): "
            "`max_total` more matches exist than were kept; `deadline` its time ran out; "
            "`max_bytes` it read as many bytes as one search may; `max_output` the answer "
            "reached the size one answer may have; `cancelled` the caller went away.",
        },
    },
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
        "cgroup_mode": {
            "type": "string",
            "enum": ["v1", "hybrid", "v2"],
            "description": "The server host's cgroup mode, found at start: v2 (unified), "
            "hybrid (v1 controllers plus a v2 mount; limits through v1) or v1.",
            "example": "v2",
        },
    },
}
#: The payload of ``progress`` events, which image_import operations emit (our event type).
_PROGRESS = {
    "type": "object",
    "x-sandtree": True,
    "description": "Data of a `progress` event (OperationEvent.type 'progress', spid null), "
    "emitted by image_import operations as layers download: counts of layers and compressed "
    "bytes done out of the total. Clients that only know the contract's event types can "
    "ignore it.",
    "properties": {
        "phase": {"type": "string", "enum": ["resolving", "downloading", "committing", "done"]},
        "layers_total": {"type": "integer"},
        "layers_done": {"type": "integer"},
        "layers_reused": {"type": "integer",
                          "description": "Layers already stored, not downloaded again."},
        "bytes_total": {"type": "integer"},
        "bytes_done": {"type": "integer"},
        "warnings": {"type": "array", "items": {"type": "string"},
                     "description": "Layer entries skipped as unsafe (first 20)."},
    },
}  # fmt: skip
_STATE_REF = {"$ref": "#/components/schemas/SandtreeDirectoryState"}
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
    "/images/{imageUUID}/export": {
        "get": {
            "summary": "Download an image as an OCI archive (sandtree extension)",
            "description": "A tar of an OCI image layout holding the image's layers (gzip), "
            "config (Env, WorkingDir, User) and manifest; it also carries a docker-save "
            "manifest.json for docker load; skopeo (oci-archive:) and sandtree's own local "
            "import read it. Exports are reproducible: the same image gives the same "
            "digests.",
            "operationId": "sandtreeExportImage",
            "tags": ["images"],
            "x-sandtree": True,
            "parameters": [_IMAGE_PATH],
            "responses": {
                "200": {
                    "description": "The archive, streamed",
                    "content": {"application/x-tar": {"schema": {"type": "string",
                                                                 "format": "binary"}}},
                },
                **_ERRORS,
            },
        }
    },
    "/images/{imageUUID}/push": {
        "post": {
            "summary": "Push an image to an OCI registry (sandtree extension)",
            "description": "Uploads the image's layers (skipping blobs the registry has) and "
            "its manifest as registry.url (docker://host[:port]/name[:tag], tag latest when "
            "omitted), with optional credentials as for imports. Answers when done. Needs "
            "the token's `push` permission (sandtree's own, since a push sends the image "
            "out of the server; `list` is not enough).",
            "operationId": "sandtreePushImage",
            "tags": ["images"],
            "x-sandtree": True,
            "x-sandtree-permission": "push",
            "parameters": [_IMAGE_PATH],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["registry"],
                "properties": {"registry": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string",
                                "example": "docker://127.0.0.1:5000/team/app:v1"},
                        "credentials": {"type": "object", "properties": {
                            "username": {"type": "string"},
                            "password": {"type": "string", "format": "password"},
                        }},
                    },
                }},
            }}}},
            "responses": {
                "200": {
                    "description": "Pushed",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "image": _UUID,
                            "url": {"type": "string"},
                            "digest": {"type": "string", "example": "sha256:…"},
                        },
                    }}},
                },
                **_ERRORS,
                "403": {"$ref": "#/components/responses/Forbidden"},
                "502": {
                    "description": "The registry refused the push or could not be reached",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Error"}}},
                },
            },
        }
    },
    "/files/batch": {
        "post": {
            "summary": "Upload many files in one request (sandtree extension)",
            "description": "The body is an uncompressed tar; each regular file in it is stored "
            "as POST /files would store it (once per sha256). The answer lists a File for each "
            "member, in order, with the member's name.",
            "operationId": "sandtreeUploadFiles",
            "tags": ["files"],
            "x-sandtree": True,
            "requestBody": {"required": True, "content": {"application/x-tar": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "201": {"description": "Stored", "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "uuid": _UUID,
                                       "sha256": {"type": "string"},
                                       "size": {"type": "integer"}},
                    }}},
                }}}},
                **_ERRORS,
            },
        }
    },
    "/files/lookup": {
        "post": {
            "summary": "Which contents are uploaded already (sandtree extension)",
            "description": "Takes up to 20,000 sha256 digests; answers the caller's files with "
            "those contents, keyed by digest (absent ones are left out).",
            "operationId": "sandtreeLookupFiles",
            "tags": ["files"],
            "x-sandtree": True,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["sha256"],
                "properties": {"sha256": {"type": "array", "items": {"type": "string"}}},
            }}}},
            "responses": {
                "200": {"description": "The files found", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {"files": {
                        "type": "object", "additionalProperties": {
                            "$ref": "#/components/schemas/FileResponse"}}}}}}},
                **_ERRORS,
            },
        }
    },
    "/directory_states": {
        "post": {
            "summary": "Save a synced tree as a directory state (sandtree extension)",
            "description": "Takes the `files` object of InstanceSpawnRequest (absolute paths to "
            "uploaded files with their modes) and answers an integer id. A spawn request's "
            "`directory_state_id` places those files before its own `files`, so a client syncing "
            "a project sends each run one id instead of every file's metadata.",
            "operationId": "sandtreeCreateDirectoryState",
            "tags": ["files"],
            "x-sandtree": True,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["files"],
                "properties": {"files": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["uuid"],
                    "properties": {"uuid": _UUID, "mode": {"type": "string", "example": "0644"},
                                   "uid": {"type": "integer"}, "gid": {"type": "integer"}},
                }}},
            }}}},
            "responses": {
                "201": {"description": "Saved",
                        "content": {"application/json": {"schema": _STATE_REF}}},
                **_ERRORS,
            },
        }
    },
    "/directory_states/{stateId}": {
        "get": {
            "summary": "A directory state with its files (sandtree extension)",
            "operationId": "sandtreeGetDirectoryState",
            "tags": ["files"],
            "x-sandtree": True,
            "parameters": [{"name": "stateId", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "responses": {
                "200": {"description": "The state",
                        "content": {"application/json": {"schema": _STATE_REF}}},
                **_ERRORS,
            },
        }
    },
}  # fmt: skip

#: Fields sandtree accepts in InstanceSpawnRequest beyond the contract's.
_SPAWN_FIELDS = {
    "type": "object",
    "x-sandtree": True,
    "x-sandtree-extends": "#/components/schemas/InstanceSpawnRequest",
    "properties": {
        "directory_state_id": {
            "type": "integer",
            "nullable": True,
            "description": "Place the files of this directory state (POST /directory_states) "
            "first; `files` at the same paths win.",
        },
    },
}
#: Fields sandtree accepts in ImageImportRequest beyond the contract's.
_IMPORT_FIELDS = {
    "type": "object",
    "x-sandtree": True,
    "x-sandtree-extends": "#/components/schemas/ImageImportRequest",
    "properties": {
        "platform": {
            "type": "string",
            "nullable": True,
            "example": "linux/arm64/v8",
            "description": "The platform (os/arch[/variant]) to take from a multi-platform "
            "image; the server's default (linux/amd64) when omitted.",
        },
    },
}
_STATE = {
    "type": "object",
    "x-sandtree": True,
    "properties": {
        "id": {"type": "integer"},
        "created_at": {"type": "string"},
        "file_count": {"type": "integer"},
        "files": {"type": "object", "description": "Only in GET: path → {uuid, mode, uid, gid}"},
    },
}


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
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["responses"].update(copy.deepcopy(_BODY_ERRORS))
    grep = document["paths"]["/inspect/{image_uuid}/grep"]["get"]
    grep["parameters"].extend(copy.deepcopy(_GREP_PARAMETERS))
    grep["responses"].update(copy.deepcopy(_GREP_RESPONSES))
    document["components"]["responses"].update(copy.deepcopy(_RESPONSES))
    document["components"]["schemas"]["SandtreeGrepFields"] = copy.deepcopy(_GREP_FIELDS)
    document["components"]["schemas"]["SandtreeImageNode"] = copy.deepcopy(_NODE)
    document["components"]["schemas"]["SandtreeWhoAmIFields"] = copy.deepcopy(_WHOAMI_FIELDS)
    document["components"]["schemas"]["SandtreeEventDataProgress"] = copy.deepcopy(_PROGRESS)
    document["components"]["schemas"]["SandtreeDirectoryState"] = copy.deepcopy(_STATE)
    document["components"]["schemas"]["SandtreeSpawnFields"] = copy.deepcopy(_SPAWN_FIELDS)
    document["components"]["schemas"]["SandtreeImportFields"] = copy.deepcopy(_IMPORT_FIELDS)
    document["info"]["x-sandtree-extensions"] = sorted(_EXTENSIONS)
    return document


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
