"""Our extension: directory states, a synced tree described once and named by id in runs.

``POST /v1/directory_states`` takes the same ``files`` object as a spawn request and answers
an integer ``id``; a spawn request's ``directory_state_id`` places those files before its own
``files``. Clients syncing a project (the MCP server's ``rsync``) then send each run an id
instead of every file's metadata.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._params import json_body
from sandtree.api.instances import parse_placed_files
from sandtree.engine import DirectoryState, Engine
from sandtree.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError

__all__ = ["routes", "state_json"]

_EXAMPLE = '{"files": {"/app/main.py": {"uuid": "<file uuid>", "mode": "0644"}}}'


def state_json(state: DirectoryState, *, with_files: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": state.id,
        "created_at": state.created_at,
        "file_count": len(state.files),
    }
    if with_files:
        out["files"] = {
            f.path: {"uuid": f.uuid, "mode": f"{f.mode:04o}", "uid": f.uid, "gid": f.gid}
            for f in state.files
        }
    return out


async def create_state(request: Request) -> Response:
    token = require(request, "upload")
    engine: Engine = request.app.state.engine
    # A synced tree is a larger body than other requests: its own caps, the entries counted
    # before they are parsed into placed files.
    limit = engine.settings.max_directory_state_bytes
    entries = engine.settings.max_directory_state_entries
    too_large = (
        f"the directory state is larger than {limit} bytes (the server's "
        "max_directory_state_bytes); exclude build outputs and dependencies from the sync"
    )
    body = await json_body(request, example=_EXAMPLE, limit=limit, too_large=too_large)
    if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
        raise InvalidRequestError(f"send a JSON object like {_EXAMPLE}")
    if len(body["files"]) > entries:
        raise PayloadTooLargeError(
            f"a directory state holds at most {entries} files (the server's "
            f"max_directory_state_entries), not {len(body['files'])}; exclude build outputs "
            "and dependencies from the sync"
        )
    files = parse_placed_files(body["files"])
    state = engine.create_directory_state(files, namespace=token.namespace)
    return JSONResponse(
        state_json(state, with_files=False),
        status_code=201,
        headers={"Location": f"/v1/directory_states/{state.id}"},
    )


async def get_state(request: Request) -> Response:
    token = require(request, "list")
    engine: Engine = request.app.state.engine
    raw = request.path_params["state_id"]
    if not raw.isdigit() or int(raw) >= 2**63:
        raise NotFoundError(f"{raw!r} is not a directory state id (a whole number)")
    state = engine.get_directory_state(int(raw), namespace=token.namespace)
    return JSONResponse(state_json(state, with_files=True))


routes = [
    Route("/directory_states", create_state, methods=["POST"]),
    Route("/directory_states/{state_id}", get_state, methods=["GET"]),
]
