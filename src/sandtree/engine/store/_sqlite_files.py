"""Uploaded files and directory states in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from sandtree.engine.store._records import FileRecord
from sandtree.engine.store._sqlite_base import SqliteBase
from sandtree.engine.types import PlacedFile

__all__ = ["FileTables"]

#: File ids per ``IN (...)`` query: well under SQLite's bound-parameter limit.
_IN_BATCH = 500


class FileTables(SqliteBase):
    """Uploaded files and directory states (with the layers made of them)."""

    # -- files --------------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO files(uuid, namespace, sha256, size, created_at) VALUES (?,?,?,?,?)",
                (record.uuid, record.namespace, record.sha256, record.size, record.created_at),
            )

    def add_directory_state(
        self, namespace: str, files: Sequence[PlacedFile], created_at: str
    ) -> int:
        rows = [[f.path, f.uuid, f.mode, f.uid, f.gid] for f in files]
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO directory_states(namespace, created_at, files) VALUES (?, ?, ?)",
                (namespace, created_at, json.dumps(rows, separators=(",", ":"))),
            )
            return int(cur.lastrowid or 0)

    def get_directory_state(self, state_id: int) -> tuple[str, str, list[PlacedFile]] | None:
        rows = self._query("SELECT * FROM directory_states WHERE id=?", (state_id,))
        if not rows:
            return None
        files = [
            PlacedFile(path=p, uuid=u, mode=m, uid=uid, gid=gid)
            for p, u, m, uid, gid in json.loads(rows[0]["files"])
        ]
        return rows[0]["namespace"], rows[0]["created_at"], files

    def directory_state_layer(self, state_id: int) -> str | None:
        rows = self._query("SELECT layer FROM directory_states WHERE id=?", (state_id,))
        return rows[0]["layer"] if rows else None

    def latest_state_layer(self, namespace: str, *, exclude: int) -> tuple[int, str] | None:
        rows = self._query(
            "SELECT id, layer FROM directory_states WHERE namespace=? AND id<>?"
            " AND layer IS NOT NULL ORDER BY id DESC LIMIT 1",
            (namespace, exclude),
        )
        return (int(rows[0]["id"]), str(rows[0]["layer"])) if rows else None

    def set_directory_state_layer(
        self, state_id: int, layer_id: str, *, size: int, span: int
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO layers(id, size, span) VALUES (?, ?, ?)",
                (layer_id, size, span),
            )
            db.execute("UPDATE directory_states SET layer=? WHERE id=?", (layer_id, state_id))

    def get_file(self, uuid: str) -> FileRecord | None:
        rows = self._query("SELECT * FROM files WHERE uuid=?", (uuid,))
        return _file_from_row(rows[0]) if rows else None

    def get_files(self, uuids: Iterable[str]) -> dict[str, FileRecord]:
        wanted = list(dict.fromkeys(uuids))
        found: dict[str, FileRecord] = {}
        for i in range(0, len(wanted), _IN_BATCH):
            batch = wanted[i : i + _IN_BATCH]
            rows = self._query(
                f"SELECT * FROM files WHERE uuid IN ({', '.join('?' for _ in batch)})", batch
            )
            found.update((r["uuid"], _file_from_row(r)) for r in rows)
        return found

    def find_file(self, namespace: str, sha256: str) -> FileRecord | None:
        rows = self._query(
            "SELECT * FROM files WHERE namespace=? AND sha256=? LIMIT 1", (namespace, sha256)
        )
        return _file_from_row(rows[0]) if rows else None

    def list_files(
        self,
        namespace: str,
        *,
        limit: int,
        offset: int,
        since: str | None = None,
        until: str | None = None,
    ) -> list[FileRecord]:
        rows = self._query(
            "SELECT * FROM files WHERE namespace=? AND created_at >= ? AND created_at <= ?"
            " ORDER BY created_at DESC, uuid LIMIT ? OFFSET ?",
            (namespace, since or "", until or "~", limit, offset),
        )
        return [_file_from_row(r) for r in rows]


def _file_from_row(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        uuid=row["uuid"],
        namespace=row["namespace"],
        sha256=row["sha256"],
        size=row["size"],
        created_at=row["created_at"],
    )
