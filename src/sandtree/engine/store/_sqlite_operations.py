"""Operations and their event logs in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from sandtree.engine.store._records import OperationQuery
from sandtree.engine.store._sqlite_base import SqliteBase, namespace_clause
from sandtree.engine.types import OperationEvent, OperationKind, OperationRecord, OperationStatus
from sandtree.errors import OperationNotFoundError

__all__ = ["OperationTables"]

_OP_COLUMNS = (
    "uuid",
    "namespace",
    "kind",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "image",
    "result_image",
    "request",
    "result",
    "duration",
    "image_size",
    "consumed_cpu",
    "consumed_memory",
)
_JSON_OP_FIELDS = frozenset({"request", "result"})


class OperationTables(SqliteBase):
    """Operations and their append-only event logs."""

    # -- operations ---------------------------------------------------------------------------

    def add_operation(self, op: OperationRecord) -> None:
        values = _op_values(op)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO operations({', '.join(_OP_COLUMNS)}) VALUES"
                f" ({', '.join('?' for _ in _OP_COLUMNS)})",
                [values[c] for c in _OP_COLUMNS],
            )

    def get_operation(self, uuid: str) -> OperationRecord | None:
        rows = self._query("SELECT * FROM operations WHERE uuid=?", (uuid,))
        return _op_from_row(rows[0]) if rows else None

    def update_operation(self, uuid: str, **fields: Any) -> None:
        if fields:
            unknown = set(fields) - set(_OP_COLUMNS)
            if unknown:
                raise TypeError(f"unknown operation fields: {sorted(unknown)}")
            cols = list(fields)
            vals = [
                json.dumps(fields[c])
                if c in _JSON_OP_FIELDS and fields[c] is not None
                else (str(fields[c]) if isinstance(fields[c], OperationStatus) else fields[c])
                for c in cols
            ]
            with self._tx() as db:
                cur = db.execute(
                    f"UPDATE operations SET {', '.join(f'{c}=?' for c in cols)} WHERE uuid=?",
                    [*vals, uuid],
                )
                if cur.rowcount == 0:
                    raise OperationNotFoundError(f"operation {uuid} does not exist")

    def list_operations(self, query: OperationQuery) -> list[OperationRecord]:
        where, params = namespace_clause(query.namespaces, "namespace")
        clauses = [where]
        if query.status:
            clauses.append("status=?")
            params.append(str(query.status))
        if query.kind:
            clauses.append("kind=?")
            params.append(str(query.kind))
        if query.since:
            clauses.append("created_at >= ?")
            params.append(query.since)
        if query.until:
            clauses.append("created_at <= ?")
            params.append(query.until)
        rows = self._query(
            f"SELECT * FROM operations WHERE {' AND '.join(clauses)}"
            " ORDER BY created_at DESC, uuid LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return [_op_from_row(r) for r in rows]

    def operations_in(self, statuses: Iterable[OperationStatus]) -> list[OperationRecord]:
        sts = [str(s) for s in statuses]
        rows = self._query(
            f"SELECT * FROM operations WHERE status IN ({', '.join('?' for _ in sts)})"
            " ORDER BY created_at",
            sts,
        )
        return [_op_from_row(r) for r in rows]

    # -- events -------------------------------------------------------------------------------

    def append_events(self, operation: str, events: Sequence[OperationEvent]) -> None:
        if not events:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO events(operation, id, ts, type, spid, data) VALUES (?,?,?,?,?,?)",
                [(operation, e.id, e.ts, e.type, e.spid, json.dumps(dict(e.data))) for e in events],
            )

    def events(self, operation: str, *, after: int = 0) -> list[OperationEvent]:
        rows = self._query(
            "SELECT * FROM events WHERE operation=? AND id>? ORDER BY id", (operation, after)
        )
        return [
            OperationEvent(
                id=r["id"], ts=r["ts"], type=r["type"], spid=r["spid"], data=json.loads(r["data"])
            )
            for r in rows
        ]


def _op_values(op: OperationRecord) -> dict[str, Any]:
    return {
        "uuid": op.uuid,
        "namespace": op.namespace,
        "kind": str(op.kind),
        "status": str(op.status),
        "created_at": op.created_at,
        "started_at": op.started_at,
        "finished_at": op.finished_at,
        "error": op.error,
        "image": op.image,
        "result_image": op.result_image,
        "request": json.dumps(dict(op.request)),
        "result": json.dumps(dict(op.result)) if op.result is not None else None,
        "duration": op.duration,
        "image_size": op.image_size,
        "consumed_cpu": op.consumed_cpu,
        "consumed_memory": op.consumed_memory,
    }


def _op_from_row(row: sqlite3.Row) -> OperationRecord:
    return OperationRecord(
        uuid=row["uuid"],
        namespace=row["namespace"],
        kind=OperationKind(row["kind"]),
        status=OperationStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        image=row["image"],
        result_image=row["result_image"],
        request=json.loads(row["request"]),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        duration=row["duration"],
        image_size=row["image_size"],
        consumed_cpu=row["consumed_cpu"],
        consumed_memory=row["consumed_memory"],
    )
