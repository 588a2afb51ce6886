"""Per-token limits on work in flight (instances, imports), kept in the server's memory.

Memory is enough: a restart ends every running operation, so nothing in flight survives it.
"""

from __future__ import annotations

from starlette.requests import Request

from sandtree.engine import Engine
from sandtree.errors import LimitExceededError, TooManyRequestsError

__all__ = ["check_concurrency", "check_timeout", "track"]


def _in_flight(request: Request, token_uuid: str, kind: str) -> set[str]:
    registry: dict[tuple[str, str], set[str]] = request.app.state.in_flight
    return registry.setdefault((token_uuid, kind), set())


def check_concurrency(
    request: Request, engine: Engine, token_uuid: str, limit: int | None, *, kind: str
) -> None:
    """Refuse (429) when the token already has ``limit`` operations of ``kind`` unfinished."""
    if limit is None:
        return
    running = _in_flight(request, token_uuid, kind)
    for op_id in list(running):
        op = engine.store.get_operation(op_id)
        if op is None or op.status.terminal:
            running.discard(op_id)
    if len(running) >= limit:
        raise TooManyRequestsError(
            f"this token already has {len(running)} {kind} queued or running (its limit is "
            f"{limit}); wait for one to end, or cancel one with DELETE /v1/operations/{{id}}"
        )


def track(request: Request, token_uuid: str, op_id: str, *, kind: str) -> None:
    """Count ``op_id`` against the token's limit until it ends."""
    _in_flight(request, token_uuid, kind).add(op_id)


def check_timeout(timeout: int, *, asked: bool, limit: int | None, name: str = "limit") -> int:
    """``timeout`` under the token's ``limit``: a default is lowered to it (a default never
    exceeds a limit), a timeout the request ``asked`` for above it is refused."""
    if limit is None:
        return timeout
    if not asked:
        return min(timeout, limit)
    if timeout > limit:
        raise LimitExceededError(f"timeout {timeout} s is above this token's {name} of {limit} s")
    return timeout
