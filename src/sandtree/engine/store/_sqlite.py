"""The embedded metadata store: one SQLite file in WAL mode."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandtree.engine.store._records import FileRecord, ImageQuery, OperationQuery
from sandtree.engine.types import (
    ImageRecord,
    OperationEvent,
    OperationKind,
    OperationRecord,
    OperationStatus,
    PlacedFile,
)
from sandtree.errors import ImageNotFoundError, OperationNotFoundError

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    uuid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    parent TEXT,
    operation TEXT,
    command TEXT,
    depth INTEGER NOT NULL,
    env TEXT NOT NULL,
    cwd TEXT NOT NULL,
    user TEXT NOT NULL,
    size INTEGER NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_parent ON images(parent);
CREATE INDEX IF NOT EXISTS images_created ON images(created_at);
CREATE TABLE IF NOT EXISTS layers (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    -- how many committed runs the layer stands for (compaction merges by it)
    span INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS image_layers (
    image TEXT NOT NULL REFERENCES images(uuid) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    layer TEXT NOT NULL REFERENCES layers(id),
    PRIMARY KEY (image, position)
);
CREATE INDEX IF NOT EXISTS image_layers_layer ON image_layers(layer);
CREATE TABLE IF NOT EXISTS tags (
    namespace TEXT NOT NULL,
    tag TEXT NOT NULL,
    image TEXT NOT NULL REFERENCES images(uuid) ON DELETE CASCADE,
    PRIMARY KEY (namespace, tag)
);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image);
CREATE TABLE IF NOT EXISTS operations (
    uuid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    image TEXT,
    result_image TEXT,
    request TEXT NOT NULL,
    result TEXT,
    duration REAL,
    image_size INTEGER,
    consumed_cpu REAL,
    consumed_memory INTEGER
);
CREATE INDEX IF NOT EXISTS operations_created ON operations(created_at);
CREATE INDEX IF NOT EXISTS operations_status ON operations(status);
CREATE TABLE IF NOT EXISTS events (
    operation TEXT NOT NULL,
    id INTEGER NOT NULL,
    ts TEXT NOT NULL,
    type TEXT NOT NULL,
    spid INTEGER,
    data TEXT NOT NULL,
    PRIMARY KEY (operation, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    uuid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha ON files(namespace, sha256);
CREATE TABLE IF NOT EXISTS directory_states (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    created_at TEXT NOT NULL,
    files TEXT NOT NULL
);
"""

#: Columns added after the first release: (table, column, declaration).
_ADDED_COLUMNS = (
    ("images", "source_digest", "TEXT"),  # registry imports: the manifest digest
    ("layers", "source", "TEXT"),  # registry layers: the blob digest they were unpacked from
    ("directory_states", "layer", "TEXT"),  # the state's files as a layer, once first used
)
_ADDED_INDEXES = """
CREATE INDEX IF NOT EXISTS images_source ON images(namespace, source_digest);
CREATE UNIQUE INDEX IF NOT EXISTS layers_source ON layers(source);
"""

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


class SqliteStore:
    """``MetadataStore`` on SQLite. Thread-safe: one connection behind a lock.

    Args:
        path: the database file, or ``":memory:"`` for a throwaway in-memory store.
    """

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys=ON")
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a power cut may lose the last commits, never half of one.
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database made by an older version up to this schema (add-only changes)."""
        for table, column, decl in _ADDED_COLUMNS:
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._db.executescript(_ADDED_INDEXES)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- images -----------------------------------------------------------------------------

    def add_image(
        self, image: ImageRecord, *, layer_sizes: dict[str, int], layer_span: int = 1
    ) -> None:
        with self._tx() as db:
            for layer_id, size in layer_sizes.items():
                db.execute(
                    "INSERT OR IGNORE INTO layers(id, size, span) VALUES (?, ?, ?)",
                    (layer_id, size, layer_span),
                )
            db.execute(
                "INSERT INTO images(uuid, namespace, parent, operation, command, depth, env, cwd,"
                " user, size, public, created_at, source_digest)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    image.uuid,
                    image.namespace,
                    image.parent,
                    image.operation,
                    image.command,
                    image.depth,
                    json.dumps(list(image.env)),
                    image.cwd,
                    image.user,
                    image.size,
                    int(image.public),
                    image.created_at,
                    image.source_digest,
                ),
            )
            db.executemany(
                "INSERT INTO image_layers(image, position, layer) VALUES (?, ?, ?)",
                [(image.uuid, i, layer) for i, layer in enumerate(image.layers)],
            )
            for tag in image.tags:
                db.execute(
                    "INSERT OR REPLACE INTO tags(namespace, tag, image) VALUES (?, ?, ?)",
                    (image.namespace, tag, image.uuid),
                )

    def _image_from_row(self, row: sqlite3.Row) -> ImageRecord:
        layers = self._query(
            "SELECT layer FROM image_layers WHERE image=? ORDER BY position", (row["uuid"],)
        )
        tags = self._query("SELECT tag FROM tags WHERE image=? ORDER BY tag", (row["uuid"],))
        return ImageRecord(
            uuid=row["uuid"],
            namespace=row["namespace"],
            parent=row["parent"],
            operation=row["operation"],
            command=row["command"],
            depth=row["depth"],
            layers=tuple(r["layer"] for r in layers),
            env=tuple(json.loads(row["env"])),
            cwd=row["cwd"],
            user=row["user"],
            size=row["size"],
            tags=tuple(r["tag"] for r in tags),
            created_at=row["created_at"],
            source_digest=row["source_digest"],
        )

    def get_image(self, uuid: str) -> ImageRecord | None:
        rows = self._query("SELECT * FROM images WHERE uuid=?", (uuid,))
        return self._image_from_row(rows[0]) if rows else None

    def list_images(self, query: ImageQuery) -> list[ImageRecord]:
        where, params = _namespace_clause(query.namespaces, "i.namespace")
        if query.include_public:
            where = f"({where} OR i.public=1)"
        clauses = [where]
        if query.uuid:
            clauses.append("i.uuid=?")
            params.append(query.uuid)
        if query.tagged is True:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.image=i.uuid)")
        elif query.tagged is False:
            clauses.append("NOT EXISTS (SELECT 1 FROM tags t WHERE t.image=i.uuid)")
        if query.tag_prefix:
            clauses.append(
                # Tags are case-sensitive, and LIKE is not: compare the prefix exactly.
                "EXISTS (SELECT 1 FROM tags t WHERE t.image=i.uuid"
                " AND substr(t.tag, 1, length(?)) = ?)"
            )
            params += [query.tag_prefix, query.tag_prefix]
        if query.since:
            clauses.append("i.created_at >= ?")
            params.append(query.since)
        if query.until:
            clauses.append("i.created_at <= ?")
            params.append(query.until)
        sql = (
            f"SELECT * FROM images i WHERE {' AND '.join(clauses)}"
            " ORDER BY i.created_at DESC, i.uuid LIMIT ? OFFSET ?"
        )
        rows = self._query(sql, [*params, query.limit, query.offset])
        return [self._image_from_row(r) for r in rows]

    def children(self, uuid: str) -> list[ImageRecord]:
        rows = self._query("SELECT * FROM images WHERE parent=? ORDER BY created_at", (uuid,))
        return [self._image_from_row(r) for r in rows]

    def add_layer(self, layer_id: str, *, size: int, span: int, source: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO layers(id, size, span, source) VALUES (?, ?, ?, ?)",
                (layer_id, size, span, source),
            )

    def layer_by_source(self, source: str) -> tuple[str, int] | None:
        rows = self._query("SELECT id, size FROM layers WHERE source=?", (source,))
        return (rows[0]["id"], rows[0]["size"]) if rows else None

    def find_image_by_source(self, namespace: str, source_digest: str) -> ImageRecord | None:
        rows = self._query(
            "SELECT * FROM images WHERE namespace=? AND source_digest=?"
            " ORDER BY created_at DESC LIMIT 1",
            (namespace, source_digest),
        )
        return self._image_from_row(rows[0]) if rows else None

    def layer_spans(self, layer_ids: Sequence[str]) -> dict[str, int]:
        rows = self._query(
            f"SELECT id, span FROM layers WHERE id IN ({', '.join('?' for _ in layer_ids)})",
            list(layer_ids),
        )
        return {r["id"]: r["span"] for r in rows}

    def replace_layers(self, uuid: str, layers: Sequence[str]) -> None:
        """Swap an image's physical stack for an equivalent one (after compaction)."""
        with self._tx() as db:
            db.execute("DELETE FROM image_layers WHERE image=?", (uuid,))
            db.executemany(
                "INSERT INTO image_layers(image, position, layer) VALUES (?, ?, ?)",
                [(uuid, i, layer) for i, layer in enumerate(layers)],
            )

    def delete_image(self, uuid: str) -> None:
        with self._tx() as db:
            cur = db.execute("DELETE FROM images WHERE uuid=?", (uuid,))
            if cur.rowcount == 0:
                raise ImageNotFoundError(f"image {uuid} does not exist")
            # Children keep their lineage pointer; they become roots of the visible tree.

    def unreferenced_layers(self) -> list[str]:
        rows = self._query(
            "SELECT id FROM layers l WHERE NOT EXISTS"
            " (SELECT 1 FROM image_layers il WHERE il.layer = l.id)"
            " AND NOT EXISTS (SELECT 1 FROM directory_states d WHERE d.layer = l.id)"
        )
        return [r["id"] for r in rows]

    def forget_layer(self, layer_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM layers WHERE id=?", (layer_id,))

    def images_with_stack_longer_than(self, n: int) -> list[str]:
        rows = self._query(
            "SELECT image FROM image_layers GROUP BY image HAVING COUNT(*) > ?", (n,)
        )
        return [r["image"] for r in rows]

    def known_layers(self) -> set[str]:
        return {r["id"] for r in self._query("SELECT id FROM layers")}

    # -- tags ---------------------------------------------------------------------------------

    def set_tag(self, namespace: str, tag: str, image: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tags(namespace, tag, image) VALUES (?, ?, ?)",
                (namespace, tag, image),
            )

    def remove_tag(self, namespace: str, tag: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM tags WHERE namespace=? AND tag=?", (namespace, tag))

    def remove_tags_of(self, image: str) -> list[str]:
        with self._tx() as db:
            rows = db.execute("SELECT tag FROM tags WHERE image=?", (image,)).fetchall()
            db.execute("DELETE FROM tags WHERE image=?", (image,))
        return [r["tag"] for r in rows]

    def resolve_tag(self, namespaces: Iterable[str], tag: str) -> str | None:
        ns = list(namespaces)
        where, params = _namespace_clause(ns, "t.namespace")
        rows = self._query(
            f"SELECT t.image, t.namespace FROM tags t WHERE t.tag=? AND {where}", [tag, *params]
        )
        # The caller's own namespace wins over a public one with the same tag.
        by_ns = {r["namespace"]: r["image"] for r in rows}
        for name in ns:
            if name in by_ns:
                return str(by_ns[name])
        return None

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
        where, params = _namespace_clause(query.namespaces, "namespace")
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


def _namespace_clause(namespaces: Sequence[str], column: str) -> tuple[str, list[Any]]:
    if not namespaces:
        return "0", []
    return f"{column} IN ({', '.join('?' for _ in namespaces)})", list(namespaces)


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


def _file_from_row(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        uuid=row["uuid"],
        namespace=row["namespace"],
        sha256=row["sha256"],
        size=row["size"],
        created_at=row["created_at"],
    )
