"""The embedded metadata store: one SQLite file in WAL mode."""

from __future__ import annotations

from sandtree.engine.store._sqlite_files import FileTables
from sandtree.engine.store._sqlite_images import ImageTables
from sandtree.engine.store._sqlite_operations import OperationTables

__all__ = ["SqliteStore"]


class SqliteStore(ImageTables, OperationTables, FileTables):
    """``MetadataStore`` on SQLite. Thread-safe: one connection behind a lock.

    Args:
        path: the database file, or ``":memory:"`` for a throwaway in-memory store.
    """
