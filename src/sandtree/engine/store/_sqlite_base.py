"""The SQLite connection, schema and migrations the store's tables share."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandtree._datadir import private_file

__all__ = ["SqliteBase", "namespace_clause"]

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


class SqliteBase:
    """One connection behind a lock, in WAL mode; subclasses add the tables' methods."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            private_file(Path(path))  # run output and env values: the server's eyes only
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


def namespace_clause(namespaces: Sequence[str], column: str) -> tuple[str, list[Any]]:
    if not namespaces:
        return "0", []
    return f"{column} IN ({', '.join('?' for _ in namespaces)})", list(namespaces)
