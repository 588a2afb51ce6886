"""``POST /v1/instances``: parse an ``InstanceSpawnRequest`` and queue the run."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandtree.api._auth import require
from sandtree.api._limits import check_concurrency, check_timeout, track
from sandtree.api._params import json_body
from sandtree.engine import Engine, PlacedFile, RunSpec, check_sandbox_id
from sandtree.errors import (
    ForbiddenError,
    ImageNotFoundError,
    InvalidRequestError,
)

__all__ = [
    "MASKED",
    "parse_exec_spec",
    "parse_placed_files",
    "parse_spawn_request",
    "parse_stdin",
    "routes",
    "shown_request",
]

_MAX_TRUNCATE = 10 * 1024 * 1024
_CWD = re.compile(r"^((/[^/]*)+/?)?$")


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; the API's integers are not booleans.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        expected = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise InvalidRequestError(f"'{name}' must be {expected}, not {json.dumps(value)}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_stdin(raw: Any) -> bytes:
    """A ``ClosableStreamRepr``'s bytes (``close`` is read by the caller)."""
    if raw is None:
        return b""
    if not isinstance(raw, dict) or not isinstance(raw.get("value"), str):
        raise InvalidRequestError('stdin must be {"value": "...", "encoding": "ascii"|"base64"}')
    if raw.get("encoding", "ascii") == "base64":
        try:
            return base64.b64decode(raw["value"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("stdin.value is not valid base64") from None
    if raw.get("encoding", "ascii") != "ascii":
        raise InvalidRequestError("stdin.encoding must be 'ascii' or 'base64'")
    return str(raw["value"]).encode()


def parse_placed_files(raw: Any) -> tuple[PlacedFile, ...]:
    """The ``files`` object of a spawn request (or a directory state) as placed files."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise InvalidRequestError('files must map absolute paths to {"uuid": ..., "mode": "0644"}')
    placed = []
    for path, meta in raw.items():
        if not path.startswith("/") or not isinstance(meta, dict) or "uuid" not in meta:
            raise InvalidRequestError(
                f'files[{path!r}] must be an absolute path mapped to {{"uuid": "<file uuid>"}}'
            )
        raw_mode = meta.get("mode", "0644")
        try:
            # Octal text ("0644", or Python's "0o100644" with the file-type bits some
            # clients send), or an integer; only the permission bits are kept.
            mode = raw_mode if isinstance(raw_mode, int) else int(str(raw_mode), 8)
        except ValueError:
            raise InvalidRequestError(
                f'files[{path!r}].mode must be octal text such as "0644"'
            ) from None
        mode &= 0o7777
        placed.append(
            PlacedFile(
                uuid=str(meta["uuid"]),
                path=path,
                mode=mode,
                uid=_owner_id(meta, path, "uid"),
                gid=_owner_id(meta, path, "gid"),
            )
        )
    return tuple(placed)


def _owner_id(meta: dict[str, Any], path: str, name: str) -> int:
    # Shifted into the sandbox's host range, an id outside 0..65535 would be a host id of its
    # own (-100000 is host root): only ids the sandbox has are accepted.
    value = _field(meta, name, int, 0)
    return check_sandbox_id(value, f"files[{path!r}].{name}")


def _stdin_close(raw: Any) -> bool:
    close = raw.get("close", True) if isinstance(raw, dict) else True
    if not isinstance(close, bool):
        raise InvalidRequestError("stdin.close must be true or false")
    return close


def _process_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The ``ExecSpec`` fields shared by instances and subprocesses."""
    if not isinstance(body.get("command"), str) or not body["command"]:
        raise InvalidRequestError("'command' is required and must be a non-empty string")
    args = _field(body, "args", list, [])
    if not all(isinstance(a, str) for a in args):
        raise InvalidRequestError("'args' must be a list of strings")
    env = _field(body, "env", dict, {})
    if not all(isinstance(v, str | None) for v in env.values()):
        raise InvalidRequestError("'env' values must be strings (or null to unset)")
    cwd = _field(body, "cwd", str, "")
    if not _CWD.match(cwd):
        raise InvalidRequestError(f"'cwd' must be an absolute path or empty, not {cwd!r}")
    truncate = _field(body, "truncate_output_at", int, 1024 * 1024)
    if not 0 <= truncate <= _MAX_TRUNCATE:
        raise InvalidRequestError(f"'truncate_output_at' must be between 0 and {_MAX_TRUNCATE}")
    uid = check_sandbox_id(_field(body, "uid", int, 0), "'uid'")
    gid = check_sandbox_id(_field(body, "gid", int, 0), "'gid'")
    return {
        "command": body["command"],
        "args": tuple(args),
        "shell": _field(body, "shell", bool, False),
        "env": env,
        "cwd": cwd,
        "uid": uid,
        "gid": gid,
        "stdin": parse_stdin(body.get("stdin")),
        "stdin_close": _stdin_close(body.get("stdin")),
        "truncate_output_at": truncate,
    }


def parse_exec_spec(body: Any) -> dict[str, Any]:
    """An ``ExecSpec`` as keyword arguments of ``Engine.exec_process``."""
    if not isinstance(body, dict):
        raise InvalidRequestError('send a JSON object with at least "command"')
    return _process_fields(body)


def parse_spawn_request(body: Any, *, default_timeout: int) -> RunSpec:
    """An ``InstanceSpawnRequest`` as a ``RunSpec``; every problem is a 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequestError('send a JSON object with at least "command" and "image"')
    if not isinstance(body.get("image"), str) or not body["image"]:
        raise InvalidRequestError("'image' is required and must be a non-empty string")
    process = _process_fields(body)
    limits = _field(body, "resources_limits", dict, {})
    max_layer = _field(limits, "max_layer_bytes", int, None)
    if max_layer is not None and max_layer < 1:
        raise InvalidRequestError("'resources_limits.max_layer_bytes' must be at least 1")
    networking = _field(body, "networking", dict, {})
    return RunSpec(
        image=body["image"],
        **process,
        hostname=_field(body, "hostname", str, "linuxkit"),
        timeout=_field(body, "timeout", int, default_timeout),
        files=parse_placed_files(body.get("files")),
        directory_state=_field(body, "directory_state_id", int, None),
        disposable=_field(body, "disposable", bool, False),
        preserve_env=_field(body, "preserve_env", bool, False),
        preserve_cwd=_field(body, "preserve_cwd", bool, False),
        max_layer_bytes=max_layer,
        network=_field(networking, "enabled", bool, False),
        # Ours: the isolation tier ("container" or "gvisor").
        isolation=_field(body, "isolation", str, None),
    )


async def spawn_instance(request: Request) -> Response:
    if not {"spawn", "spawn_disposable"} & request.state.token.permissions:
        # Which of the two a run needs is in its body; a token with neither is refused
        # before the body is read at all.
        require(request, "spawn_disposable")
    body = await json_body(
        request, example='{"command": "echo hi", "image": "tag:busybox:latest", "shell": true}'
    )
    engine: Engine = request.app.state.engine
    spec = parse_spawn_request(body, default_timeout=engine.settings.default_timeout)
    token = request.state.token
    if spec.disposable and "spawn" not in token.permissions:
        token = require(request, "spawn_disposable")
    elif not spec.disposable:
        try:
            token = require(request, "spawn")
        except ForbiddenError:
            raise ForbiddenError(
                'this token may only run disposable instances; send "disposable": true '
                "or use a token with the 'spawn' permission"
            ) from None
    timeout = check_timeout(
        spec.timeout,
        asked=body.get("timeout") is not None,
        limit=token.limits.get("instance_max_timeout"),
    )
    if timeout != spec.timeout:
        spec = dataclasses.replace(spec, timeout=timeout)
    limit = token.limits.get("instance_max_concurrency")
    check_concurrency(request, engine, token.uuid, limit, kind="instances")
    shown = shown_request(body)
    try:
        op = await engine.spawn(spec, namespace=token.namespace, request=shown)
    except ImageNotFoundError as exc:
        # The image is named in the body: the contract answers that with a 400, not a 404.
        raise InvalidRequestError(exc.message) from None
    track(request, token.uuid, op.uuid, kind="instances")
    payload = {**shown, "uuid": op.uuid, "image": op.image, "result": None}
    return JSONResponse(payload, status_code=201, headers={"Location": f"/v1/operations/{op.uuid}"})


#: What an env value is shown as wherever the request is kept or served.
MASKED = "<MASKED>"


def shown_request(body: dict[str, Any]) -> dict[str, Any]:
    """The spawn request as its operation keeps and serves it (``metadata``): every ``env``
    value masked, whatever its name. The run gets the values from the parsed spec; nothing
    after it needs them, so they are never written down (a name-based guess such as
    ``*_TOKEN`` misses ``DATABASE_URL=postgres://user:pw@...``)."""
    env = body.get("env")
    if not isinstance(env, dict) or not env:
        return body
    return {**body, "env": {k: None if v is None else MASKED for k, v in env.items()}}


routes = [Route("/instances", spawn_instance, methods=["POST"])]
