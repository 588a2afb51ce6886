"""``rsync``: a local tree into a server-side directory state, sending only what changed.

- Excludes work like .gitignore lines: a pattern without a slash (``__pycache__``,
  ``*.pyc``) matches a name at any depth; one with a slash (``build/out``, ``/dist``) matches
  the path from the source root; a trailing slash matches directories only. An excluded
  directory is not walked.
- ``source`` may be a directory (its contents go under ``destination``), a single file, or a
  glob (``/src/**/*.py``; paths are kept relative to the glob's fixed prefix).
- Hashes are cached by (device, inode, size, mtime), uploads by sha256 per server, and
  states by their content: a second sync of an unchanged tree hashes nothing, uploads
  nothing and answers the same ``directory_state_id``. The cache is a SQLite file, so this
  survives restarts; the states themselves live on the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import glob
import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sandtree.client import SandtreeClient
from sandtree.errors import InvalidRequestError, SandtreeError

__all__ = ["ExcludeRules", "LocalFile", "SyncCache", "SyncResult", "collect", "sync"]

_UPLOADS_AT_ONCE = 16
_LOOKUP_BATCH = 5_000
_UPLOAD_BATCH_FILES = 2_000
_UPLOAD_BATCH_BYTES = 128 << 20
_GLOB_CHARS = frozenset("*?[")


class ExcludeRules:
    """Glob patterns matched like .gitignore lines (no negation)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._names: list[tuple[str, bool]] = []
        self._paths: list[tuple[str, bool]] = []
        for raw in patterns:
            pattern = raw.strip()
            if not pattern or pattern.startswith("#"):
                continue
            dir_only = pattern.endswith("/")
            pattern = pattern.rstrip("/")
            if "/" in pattern:
                self._paths.append((pattern.lstrip("/").replace("**/", "*"), dir_only))
            else:
                self._names.append((pattern, dir_only))

    def excluded(self, rel: str, *, is_dir: bool) -> bool:
        """Whether ``rel`` (relative to the source, ``/``-separated) is excluded."""
        name = rel.rsplit("/", 1)[-1]
        for pattern, dir_only in self._names:
            if (is_dir or not dir_only) and fnmatch.fnmatchcase(name, pattern):
                return True
        for pattern, dir_only in self._paths:
            if (is_dir or not dir_only) and fnmatch.fnmatchcase(rel, pattern):
                return True
        return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalFile:
    """A regular file to sync: where it is, where it goes, and what identifies its content."""

    path: str
    target: str
    mode: int
    size: int
    mtime_ns: int
    dev: int
    ino: int


def _local(path: str, target: str) -> LocalFile | None:
    try:
        st = os.stat(path)  # follows a symlink to a file, as cp would
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return LocalFile(
        path=path,
        target=target,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        dev=st.st_dev,
        ino=st.st_ino,
    )


def _walk(root: str, rules: ExcludeRules, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(absolute path, path relative to the walk's start) of files, pruning excluded dirs."""
    stack = [(root, prefix)]
    while stack:
        directory, rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if rules.excluded(rel, is_dir=is_dir):
                continue
            if is_dir:
                stack.append((entry.path, rel))
            else:
                yield entry.path, rel


def _excluded_with_parents(rules: ExcludeRules, rel: str, *, is_dir: bool) -> bool:
    """Whether ``rel`` or a directory above it (up to the glob's fixed prefix) is excluded:
    a glob such as ``/proj/**/*.py`` must not bring back what excluding ``.venv`` dropped."""
    parts = rel.split("/")
    return any(
        rules.excluded("/".join(parts[:i]), is_dir=True) for i in range(1, len(parts))
    ) or rules.excluded(rel, is_dir=is_dir)


def collect(source: str, destination: str, exclude: Sequence[str] = ()) -> list[LocalFile]:
    """The files ``source`` (a directory, a file or a glob) puts under ``destination``.

    Raises:
        InvalidRequestError: a relative or missing source, a relative destination.
    """
    expanded = os.path.expanduser(source)
    if not os.path.isabs(expanded):
        raise InvalidRequestError(
            f"source must be an absolute local path (or glob), got {source!r}; "
            "e.g. '/home/me/project'"
        )
    if not destination.startswith("/"):
        raise InvalidRequestError(
            f"destination must be an absolute directory in the sandbox, got {destination!r}; "
            "e.g. '/app'"
        )
    dest = destination.rstrip("/") or ""
    rules = ExcludeRules(exclude)
    pairs: list[tuple[str, str]] = []
    if _GLOB_CHARS & set(expanded):
        parts = expanded.split("/")
        fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
        base = "/".join(parts[:fixed]) or "/"
        matches = sorted(glob.glob(expanded, recursive=True))
        if not matches:
            raise InvalidRequestError(f"source glob {source!r} matches nothing")
        for match in matches:
            rel = os.path.relpath(match, base)
            if _excluded_with_parents(rules, rel, is_dir=os.path.isdir(match)):
                continue
            if os.path.isdir(match):
                pairs.extend(_walk(match, rules, rel))
            else:
                pairs.append((match, rel))
    elif os.path.isdir(expanded):
        pairs.extend(_walk(expanded, rules))
    elif os.path.exists(expanded):
        pairs.append((expanded, os.path.basename(expanded)))
    else:
        raise InvalidRequestError(f"source {source!r} does not exist")
    seen: dict[str, LocalFile] = {}
    for path, rel in pairs:
        found = _local(path, f"{dest}/{rel}")
        if found is not None:
            seen[found.target] = found
    return list(seen.values())


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyncResult:
    directory_state_id: int
    files: int
    hashed: int
    uploaded: int
    bytes_uploaded: int
    seconds: float
    reused_state: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SyncCache:
    """What earlier syncs learned: content hashes, uploaded files and states, per server."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS hashes (dev INTEGER, ino INTEGER, size INTEGER,
                mtime_ns INTEGER, sha256 TEXT NOT NULL, PRIMARY KEY (dev, ino));
            CREATE TABLE IF NOT EXISTS uploads (server TEXT, sha256 TEXT, uuid TEXT NOT NULL,
                PRIMARY KEY (server, sha256));
            CREATE TABLE IF NOT EXISTS states (server TEXT, key TEXT, state_id INTEGER NOT NULL,
                PRIMARY KEY (server, key));
            """
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def hashes(self) -> dict[tuple[int, int], tuple[int, int, str]]:
        with self._lock:
            rows = self._db.execute("SELECT dev, ino, size, mtime_ns, sha256 FROM hashes")
            return {(d, i): (s, m, h) for d, i, s, m, h in rows}

    def put_hashes(self, rows: Sequence[tuple[int, int, int, int, str]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def uploads(self, server: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT sha256, uuid FROM uploads WHERE server=?", (server,))
            return dict(rows.fetchall())

    def put_uploads(self, server: str, rows: dict[str, str]) -> None:
        """Remember many uploads (sha256 → file uuid) in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?)",
                [(server, sha, uuid) for sha, uuid in rows.items()],
            )
            self._db.execute("COMMIT")

    def state(self, server: str, key: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state_id FROM states WHERE server=? AND key=?", (server, key)
            ).fetchone()
            return int(row[0]) if row else None

    def put_state(self, server: str, key: str, state_id: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO states VALUES (?, ?, ?)", (server, key, state_id)
            )

    def forget_state(self, server: str, state_id: int) -> None:
        """Drop a state the server no longer has, so the next sync makes it again."""
        with self._lock:
            self._db.execute("DELETE FROM states WHERE server=? AND state_id=?", (server, state_id))

    def forget_server(self, server: str) -> None:
        """Drop what we believed the server has (it lost its files or states)."""
        with self._lock:
            self._db.execute("DELETE FROM uploads WHERE server=?", (server,))
            self._db.execute("DELETE FROM states WHERE server=?", (server,))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def sync(
    client: SandtreeClient,
    cache: SyncCache,
    server: str,
    source: str,
    destination: str,
    exclude: Sequence[str] = (),
) -> SyncResult:
    """Sync ``source`` to ``destination``; returns the server's directory state for it."""
    started = time.monotonic()
    files = await asyncio.to_thread(collect, source, destination, exclude)
    known = await asyncio.to_thread(cache.hashes)
    shas: dict[str, str] = {}
    fresh: list[tuple[int, int, int, int, str]] = []
    to_hash: list[LocalFile] = []
    for f in files:
        hit = known.get((f.dev, f.ino))
        if hit is not None and hit[0] == f.size and hit[1] == f.mtime_ns:
            shas[f.path] = hit[2]
        else:
            to_hash.append(f)
    if to_hash:
        digests = await asyncio.gather(*(asyncio.to_thread(_sha256, f.path) for f in to_hash))
        for f, digest in zip(to_hash, digests, strict=True):
            shas[f.path] = digest
            fresh.append((f.dev, f.ino, f.size, f.mtime_ns, digest))
        await asyncio.to_thread(cache.put_hashes, fresh)
    try:
        return await _publish(client, cache, server, files, shas, len(to_hash), started)
    except SandtreeError as exc:
        if exc.status != 404:
            raise
        # The server lost files we had uploaded (a new data directory): start over once.
        cache.forget_server(server)
        return await _publish(client, cache, server, files, shas, len(to_hash), started)


async def _upload_in_batches(
    client: SandtreeClient,
    cache: SyncCache,
    server: str,
    missing: list[str],
    by_sha: dict[str, LocalFile],
    uploads: dict[str, str],
    sent: list[int],
) -> None:
    """Ask which contents the server has (one request per 5,000), then send the rest as
    tars of up to 2,000 files or 128 MiB each, two at a time."""
    for start in range(0, len(missing), _LOOKUP_BATCH):
        found = await client.lookup_files(missing[start : start + _LOOKUP_BATCH])
        known = {sha: str(record["uuid"]) for sha, record in found.items()}
        uploads.update(known)
        await asyncio.to_thread(cache.put_uploads, server, known)
    todo = [sha for sha in missing if sha not in uploads]
    batches: list[list[str]] = [[]]
    size = 0
    for sha in todo:
        if len(batches[-1]) >= _UPLOAD_BATCH_FILES or size >= _UPLOAD_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(sha)
        size += by_sha[sha].size
    gate = asyncio.Semaphore(2)

    async def send(batch: list[str]) -> None:
        async with gate:
            stored = await client.upload_files([Path(by_sha[sha].path) for sha in batch])
        remember = {}
        for sha, record in zip(batch, stored, strict=True):
            uploads[sha] = str(record["uuid"])
            # A file that changed while it was sent arrives as its new content: use it now,
            # but never remember it under the old digest.
            if record.get("sha256") == sha:
                remember[sha] = uploads[sha]
            sent[0] += 1
            sent[1] += int(record.get("size") or 0)
        await asyncio.to_thread(cache.put_uploads, server, remember)

    await asyncio.gather(*(send(batch) for batch in batches if batch))


async def _upload_one_by_one(
    client: SandtreeClient,
    cache: SyncCache,
    server: str,
    missing: list[str],
    by_sha: dict[str, LocalFile],
    uploads: dict[str, str],
    sent: list[int],
) -> None:
    gate = asyncio.Semaphore(_UPLOADS_AT_ONCE)
    done: dict[str, str] = {}

    async def ensure(sha: str) -> None:
        async with gate:
            found = await client.find_file(sha)
            if found is None:
                found = await client.upload_file(Path(by_sha[sha].path))
                sent[0] += 1
                sent[1] += by_sha[sha].size
            uploads[sha] = done[sha] = str(found["uuid"])

    try:
        await asyncio.gather(*(ensure(sha) for sha in missing if sha not in uploads))
    finally:
        # One transaction for the lot (not one per file), kept even if an upload failed.
        cache.put_uploads(server, done)


async def _publish(
    client: SandtreeClient,
    cache: SyncCache,
    server: str,
    files: list[LocalFile],
    shas: dict[str, str],
    hashed: int,
    started: float,
) -> SyncResult:
    uploads = cache.uploads(server)
    by_sha = {shas[f.path]: f for f in files}
    missing = [sha for sha in by_sha if sha not in uploads]
    sent = [0, 0]
    if missing:
        try:
            await _upload_in_batches(client, cache, server, missing, by_sha, uploads, sent)
        except SandtreeError as exc:
            if exc.status not in (404, 405):
                raise
            # A server without our batch endpoints (e.g. ConTree): a file per request.
            await _upload_one_by_one(client, cache, server, missing, by_sha, uploads, sent)
    entries = {
        f.target: {"uuid": uploads[shas[f.path]], "mode": f"{f.mode:04o}"}
        for f in sorted(files, key=lambda f: f.target)
    }
    key = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    state_id = cache.state(server, key)
    reused = state_id is not None
    if state_id is None:
        state = await client.create_directory_state(entries)
        state_id = int(state["id"])
        cache.put_state(server, key, state_id)
    return SyncResult(
        directory_state_id=state_id,
        files=len(files),
        hashed=hashed,
        uploaded=sent[0],
        bytes_uploaded=sent[1],
        seconds=round(time.monotonic() - started, 3),
        reused_state=reused,
    )
