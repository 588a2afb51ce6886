"""The table of live runs: what a request for processes, stdin or signals of an operation
without a live sandbox is told, by where the operation stands."""

from __future__ import annotations

import pytest

from sandtree.engine import OperationRecord, OperationStatus
from sandtree.engine._processes import ProcessTable
from sandtree.engine.types import OperationKind
from sandtree.errors import ConflictError, NotReadyError

pytestmark = pytest.mark.anyio

OP = "00000000-0000-4000-8000-000000000001"


def _table(kind: OperationKind, status: OperationStatus) -> ProcessTable:
    record = OperationRecord(uuid=OP, kind=kind, status=status, created_at="2026-01-01T00:00:00Z")
    return ProcessTable(lambda op_id: record if op_id == OP else None)


@pytest.mark.parametrize(
    "status", [OperationStatus.PENDING, OperationStatus.ASSIGNED, OperationStatus.EXECUTING]
)
async def test_a_run_that_has_not_ended_is_told_to_retry(status: OperationStatus) -> None:
    table = _table(OperationKind.INSTANCE, status)

    for request in (
        table.exec(
            OP,
            args=["true"],
            env={},
            cwd="",
            uid=0,
            gid=0,
            stdin=b"",
            stdin_close=True,
            truncate=None,
        ),
        table.write_stdin(OP, 1, b"x", close=True),
        table.signal(OP, 1, 15),
    ):
        with pytest.raises(NotReadyError, match=f"is {status}.*retry") as refused:
            await request
        assert refused.value.retry_after == 1


@pytest.mark.parametrize(
    "status", [OperationStatus.SUCCESS, OperationStatus.FAILED, OperationStatus.CANCELLED]
)
async def test_an_ended_run_is_a_conflict_naming_how_it_ended(status: OperationStatus) -> None:
    table = _table(OperationKind.INSTANCE, status)

    with pytest.raises(ConflictError, match=f"ended {status}.*start a new run"):
        await table.signal(OP, 1, 15)


async def test_an_import_never_has_a_sandbox_even_while_it_runs() -> None:
    table = _table(OperationKind.IMAGE_IMPORT, OperationStatus.EXECUTING)

    with pytest.raises(ConflictError, match="has none"):
        await table.write_stdin(OP, 1, b"x", close=True)


async def test_an_unknown_operation_is_a_conflict_not_a_retry() -> None:
    table = _table(OperationKind.INSTANCE, OperationStatus.EXECUTING)

    with pytest.raises(ConflictError):
        await table.signal("00000000-0000-4000-8000-000000000002", 1, 15)
