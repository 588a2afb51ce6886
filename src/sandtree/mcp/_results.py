"""What the tools answer about operations: the reference's keys, plus what it promised.

``operation_output`` keeps the 17 keys agents written for contree-mcp read (``exit_code``,
``stdout``, ``result_image_uuid``…) and adds the documented ones the reference lacked:
``state``, ``result_image``, ``filesystem_changed``, ``stdout_truncated``/``stderr_truncated``
and ``resources``. Output is decoded as UTF-8 and capped, so a huge log never breaks a reply.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_STREAM_CHARS", "decode_stream", "operation_output", "summary_output"]

#: Characters of stdout (and of stderr) one reply carries at most; the middle is elided.
MAX_STREAM_CHARS = 100_000


def decode_stream(stream: Any) -> tuple[str, bool]:
    """An API ``StreamRepr`` (``{value, encoding, truncated}``) as text and its truncated flag."""
    if not isinstance(stream, Mapping):
        return "", False
    value = str(stream.get("value") or "")
    if stream.get("encoding") == "base64":
        try:
            value = base64.b64decode(value).decode("utf-8", "replace")
        except ValueError:
            value = ""
    truncated = bool(stream.get("truncated"))
    if len(value) > MAX_STREAM_CHARS:
        half = MAX_STREAM_CHARS // 2
        elided = len(value) - 2 * half
        value = f"{value[:half]}\n[… {elided} characters elided …]\n{value[-half:]}"
        truncated = True
    return value, truncated


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def operation_output(op: Mapping[str, Any]) -> dict[str, Any]:
    """An ``OperationResponse`` as the ``run``/``get_operation``/``wait_operations`` result."""
    metadata = _mapping(op.get("metadata"))
    run = _mapping(metadata.get("result"))
    state = _mapping(run.get("state"))
    result = op.get("result") if isinstance(op.get("result"), Mapping) else None
    stdout, stdout_truncated = decode_stream(run.get("stdout"))
    stderr, stderr_truncated = decode_stream(run.get("stderr"))
    result_image = op.get("result_image_uuid") or (result or {}).get("image")
    out: dict[str, Any] = {
        "uuid": op.get("uuid", ""),
        "status": op.get("status", ""),
        "kind": op.get("kind", ""),
        "error": op.get("error"),
        "created_at": op.get("created_at", ""),
        "result": {"image": (result or {}).get("image"), "tag": (result or {}).get("tag")}
        if result is not None
        else None,
        "duration": op.get("duration"),
        "image_size": op.get("image_size"),
        "consumed_cpu": op.get("consumed_cpu"),
        "consumed_memory": op.get("consumed_memory"),
        "image_uuid": op.get("image_uuid"),
        "result_image_uuid": op.get("result_image_uuid"),
        "exit_code": state.get("exit_code"),
        "timed_out": bool(state.get("timed_out", False)),
        "stdout": stdout,
        "stderr": stderr,
        # Documented by the reference, missing from its results:
        "state": op.get("status", ""),
        "result_image": result_image,
        "filesystem_changed": run.get("filesystem_changed"),
        "stdout_truncated": stdout_truncated,
        "stderr_truncated": stderr_truncated,
        "resources": dict(run["resources"]) if isinstance(run.get("resources"), Mapping) else None,
    }
    if run.get("limit_hit"):
        out["limit_hit"] = run["limit_hit"]
    return out


def summary_output(op: Mapping[str, Any]) -> dict[str, Any]:
    """An ``OperationSummary`` as ``list_operations`` lists it."""
    keys = ("uuid", "kind", "status", "error", "created_at", "duration", "image_uuid")
    out = {key: op.get(key) for key in keys}
    out["result_image_uuid"] = op.get("result_image_uuid")
    return out
