"""What every tool shares: the API client, the sync cache, stored registry credentials, and
the conversion of errors into tool errors that say which call fixes them."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from mcp.server.mcpserver.exceptions import ToolError

from sandtree.client import SandtreeClient
from sandtree.errors import SandtreeError

from ._rsync import SyncCache

__all__ = ["McpContext", "registry_host", "tool_errors"]

_HINTS = {
    401: "the token is not valid: set --token / SANDTREE_TOKEN, or run `sandtree token create`",
    403: "this token lacks the permission; whoami lists what it may do",
    429: "too much work is in flight for this token; wait_operations, then retry",
    503: "the sandtree server is not reachable; start it with `sandtree serve`",
}


@dataclasses.dataclass
class McpContext:
    """State one MCP server holds; everything else lives on the sandtree server."""

    client: SandtreeClient
    state_dir: Path
    token: str | None = None

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.sync_cache = SyncCache(self.state_dir / "rsync.db")

    @property
    def server_key(self) -> str:
        """Names this server and token in local caches (ids differ between servers)."""
        token = hashlib.sha256((self.token or "").encode()).hexdigest()[:12]
        return f"{self.client.url}#{token}"

    # -- registry credentials (kept locally, 0600, sent with imports from that registry) ----

    @property
    def _credentials_path(self) -> Path:
        return self.state_dir / "registry-credentials.json"

    def registry_credentials(self, host: str) -> dict[str, str] | None:
        try:
            stored = json.loads(self._credentials_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        found = stored.get(host) if isinstance(stored, dict) else None
        return dict(found) if isinstance(found, dict) else None

    def store_registry_credentials(self, host: str, username: str, token: str) -> None:
        try:
            stored = json.loads(self._credentials_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
        stored[host] = {"username": username, "password": token}
        tmp = self._credentials_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(stored, f)
        os.replace(tmp, self._credentials_path)

    def close(self) -> None:
        self.sync_cache.close()


_DOCKER_HUB_ALIASES = frozenset(
    {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_BARE_HOST = re.compile(r"(?:[^/:]*\.[^/:]*|localhost)(?::\d+)?")


def registry_host(url: str) -> str:
    """The registry an image reference lives in (``docker.io`` for bare names).

    A registry alone (``ghcr.io``, ``127.0.0.1:5000``, ``https://ghcr.io``), as people pass
    to registry_auth, is that registry; ``python:3.11`` is an image on Docker Hub.
    """
    ref = re.sub(r"^[a-z][a-z0-9+.-]*://", "", url.strip(), flags=re.IGNORECASE)
    first, slash, _ = ref.partition("/")
    is_host = (
        ("." in first or ":" in first or first == "localhost")
        if slash
        else bool(_BARE_HOST.fullmatch(first))
    )
    if not is_host or first in _DOCKER_HUB_ALIASES:
        return "docker.io"
    return first


@contextlib.contextmanager
def tool_errors(hint: str = "") -> Iterator[None]:
    """Turn sandtree errors into tool errors: the server's message, then what to do next."""
    try:
        yield
    except SandtreeError as exc:
        raise ToolError(_with_hint(exc.message, _HINTS.get(exc.status) or hint)) from exc


def _with_hint(message: str, hint: str) -> str:
    """``message`` and what to do next, unless it already names every tool or command the
    hint does (server messages often name the fix; "import the image" is not ``import_image``)."""
    if not hint or hint in message:
        return message
    names = [n.strip("`") for n in re.findall(r"`[^`]+`|\b[a-z]+(?:_[a-z]+)+\b", hint)]
    if names and all(name in message for name in names):
        return message
    return f"{message} ({hint})"
