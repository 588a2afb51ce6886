"""API tokens: stored hashed, each bound to a namespace with permissions and limits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from sandtree.errors import InvalidRequestError, NotFoundError

__all__ = ["DEFAULT_LIMITS", "PERMISSIONS", "TokenRecord", "TokenStore"]

#: Every permission a token can hold (the ConTree API's names).
PERMISSIONS = (
    "list",
    "spawn",
    "spawn_disposable",
    "import",
    "cancel",
    "set_image_tag",
    "upload",
)

#: Limits a token carries unless created with others.
DEFAULT_LIMITS: Mapping[str, int] = {
    "instance_max_timeout": 3600,
    "instance_max_concurrency": 16,
    "images_import_max_concurrency": 4,
    "images_import_max_timeout": 3600,
}

_PREFIX = "st_"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenRecord:
    uuid: str
    name: str
    namespace: str
    permissions: frozenset[str]
    limits: Mapping[str, int]
    created_at: str
    expires_at: int | None = None
    revoked: bool = False


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Tokens in their own SQLite file; only a sha256 of each secret is kept."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (uuid TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " namespace TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, permissions TEXT NOT NULL,"
            " limits TEXT NOT NULL, created_at TEXT NOT NULL, expires_at INTEGER,"
            " revoked INTEGER NOT NULL DEFAULT 0)"
        )

    def create(
        self,
        *,
        name: str,
        namespace: str = "default",
        permissions: Iterable[str] = PERMISSIONS,
        limits: Mapping[str, int] | None = None,
        created_at: str,
    ) -> tuple[TokenRecord, str]:
        """A new token; returns its record and the secret, which is shown only now."""
        perms = frozenset(permissions)
        unknown = perms - set(PERMISSIONS)
        if unknown:
            raise InvalidRequestError(
                f"unknown permissions {sorted(unknown)}; choose from {', '.join(PERMISSIONS)}"
            )
        record = TokenRecord(
            uuid=str(uuid.uuid4()),
            name=name,
            namespace=namespace,
            permissions=perms,
            limits={**DEFAULT_LIMITS, **(limits or {})},
            created_at=created_at,
        )
        secret = _PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens(uuid, name, namespace, hash, permissions, limits, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    record.uuid,
                    name,
                    namespace,
                    _hash(secret),
                    json.dumps(sorted(perms)),
                    json.dumps(dict(record.limits)),
                    created_at,
                ),
            )
        return record, secret

    def verify(self, secret: str) -> TokenRecord | None:
        """The live token with this secret, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM tokens WHERE hash=? AND revoked=0", (_hash(secret),)
            ).fetchone()
        return _record(row) if row is not None else None

    def list(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        return [_record(r) for r in rows]

    def revoke(self, token_uuid: str) -> None:
        with self._lock:
            cur = self._db.execute("UPDATE tokens SET revoked=1 WHERE uuid=?", (token_uuid,))
        if cur.rowcount == 0:
            raise NotFoundError(f"no token {token_uuid}; `sandtree token list` shows them")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        uuid=row["uuid"],
        name=row["name"],
        namespace=row["namespace"],
        permissions=frozenset(json.loads(row["permissions"])),
        limits=json.loads(row["limits"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked=bool(row["revoked"]),
    )
