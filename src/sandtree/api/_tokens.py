"""API tokens: stored hashed, each bound to a namespace with permissions and limits."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from sandtree._datadir import private_file
from sandtree.errors import (
    InvalidRequestError,
    NotFoundError,
    TokenExpiredError,
    UnauthorizedError,
)

__all__ = ["DEFAULT_LIMITS", "PERMISSIONS", "Clock", "TokenRecord", "TokenStore"]

#: Tells the current time (timezone-aware); a parameter of ``TokenStore`` so tests can pick it.
Clock = Callable[[], datetime.datetime]

#: Every permission a token can hold (the ConTree API's names).
PERMISSIONS = (
    "list",
    "spawn",
    "spawn_disposable",
    "import",
    "cancel",
    "set_image_tag",
    "upload",
    # Ours: pushing an image to a registry (it sends the image's bytes out of the server).
    "push",
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
    """One token as stored (never its secret)."""

    uuid: str
    name: str
    namespace: str
    permissions: frozenset[str]
    limits: Mapping[str, int]
    created_at: str
    #: When it stops working (UTC, whole seconds); None: never.
    expires_at: datetime.datetime | None = None
    revoked: bool = False

    def expired(self, now: datetime.datetime) -> bool:
        """Whether the token has expired at ``now``."""
        return self.expires_at is not None and now >= self.expires_at


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` in UTC; a naive one is taken as UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


class TokenStore:
    """Tokens in their own SQLite file; only a sha256 of each secret is kept.

    ``clock`` tells the time that expiry is judged by (the system's UTC clock by default).
    Opening a file made by an older sandtree adds the columns it lacks.
    """

    def __init__(self, path: Path | str, *, clock: Clock = _utc_now) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            private_file(Path(path))  # token hashes and namespaces: the server's eyes only
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._migrate()

    def _migrate(self) -> None:
        # IMMEDIATE: a server and `sandtree token` opening the same old file add a column once.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS tokens (uuid TEXT PRIMARY KEY, name TEXT NOT NULL,"
                " namespace TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, permissions TEXT NOT NULL,"
                " limits TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT,"
                " revoked INTEGER NOT NULL DEFAULT 0)"
            )
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(tokens)")}
            if "expires_at" not in columns:
                self._db.execute("ALTER TABLE tokens ADD COLUMN expires_at TEXT")
            if self._db.execute("PRAGMA user_version").fetchone()[0] < 1:
                self._grant_push_to_full_tokens()
                self._db.execute("PRAGMA user_version = 1")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _grant_push_to_full_tokens(self) -> None:
        # `push` was split out of `list` later: a token made with every permission of its
        # time (the admin token among them) keeps pushing; a narrower one does not start to.
        before_push = set(PERMISSIONS) - {"push"}
        for row in self._db.execute("SELECT uuid, permissions FROM tokens").fetchall():
            perms = set(json.loads(row["permissions"]))
            if before_push <= perms and "push" not in perms:
                self._db.execute(
                    "UPDATE tokens SET permissions = ? WHERE uuid = ?",
                    (json.dumps(sorted(perms | {"push"})), row["uuid"]),
                )

    def create(
        self,
        *,
        name: str,
        namespace: str = "default",
        permissions: Iterable[str] = PERMISSIONS,
        limits: Mapping[str, int] | None = None,
        created_at: str,
        expires_at: datetime.datetime | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token; returns its record and the secret, which is shown only now.

        ``expires_at`` (rounded down to the second; naive means UTC) must be in the future;
        from then on the token is refused. None: it never expires.
        """
        perms = frozenset(permissions)
        unknown = perms - set(PERMISSIONS)
        if unknown:
            raise InvalidRequestError(
                f"unknown permissions {sorted(unknown)}; choose from {', '.join(PERMISSIONS)}"
            )
        if expires_at is not None:
            expires_at = _utc(expires_at).replace(microsecond=0)
            now = self._clock()
            if expires_at <= now:
                raise InvalidRequestError(
                    f"the expiry {expires_at.isoformat()} is not in the future (it is now "
                    f"{_utc(now).isoformat(timespec='seconds')}); pick a later time"
                )
        record = TokenRecord(
            uuid=str(uuid.uuid4()),
            name=name,
            namespace=namespace,
            permissions=perms,
            limits={**DEFAULT_LIMITS, **(limits or {})},
            created_at=created_at,
            expires_at=expires_at,
        )
        secret = _PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens(uuid, name, namespace, hash, permissions, limits,"
                " created_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.uuid,
                    name,
                    namespace,
                    _hash(secret),
                    json.dumps(sorted(perms)),
                    json.dumps(dict(record.limits)),
                    created_at,
                    expires_at.isoformat() if expires_at is not None else None,
                ),
            )
        return record, secret

    def authenticate(self, secret: str) -> TokenRecord:
        """The live token with this secret.

        Raises:
            TokenExpiredError: it expired; the message says when.
            UnauthorizedError: no token has this secret, or it was revoked.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM tokens WHERE hash=? AND revoked=0", (_hash(secret),)
            ).fetchone()
        if row is None:
            raise UnauthorizedError(
                "this token is unknown or revoked; `sandtree token create` makes a new one"
            )
        record = _record(row)
        expires = record.expires_at
        if expires is not None and record.expired(self._clock()):
            raise TokenExpiredError(
                f"this token expired at {expires.isoformat()}; "
                "`sandtree token create` makes a new one (`--expires-in` sets how long it lasts)"
            )
        return record

    def verify(self, secret: str) -> TokenRecord | None:
        """The live token with this secret, or None (unknown, revoked or expired)."""
        try:
            return self.authenticate(secret)
        except UnauthorizedError:
            return None

    def now(self) -> datetime.datetime:
        """The time by this store's clock, which expiry is judged by."""
        return self._clock()

    def list(self) -> list[TokenRecord]:
        """Every token, revoked and expired ones too, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        return [_record(r) for r in rows]

    def revoke(self, token_uuid: str) -> None:
        """Revoke a token: it is refused from then on."""
        with self._lock:
            cur = self._db.execute("UPDATE tokens SET revoked=1 WHERE uuid=?", (token_uuid,))
        if cur.rowcount == 0:
            raise NotFoundError(f"no token {token_uuid}; `sandtree token list` shows them")

    def close(self) -> None:
        """Close the database; the store is unusable afterwards."""
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
        expires_at=_expiry(row["expires_at"]),
        revoked=bool(row["revoked"]),
    )


def _expiry(value: str | float | None) -> datetime.datetime | None:
    # ISO 8601 text; a number is a Unix time, which the column was once declared to hold.
    if value is None:
        return None
    if isinstance(value, str):
        return _utc(datetime.datetime.fromisoformat(value))
    return datetime.datetime.fromtimestamp(value, datetime.UTC)
