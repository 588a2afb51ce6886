"""Where the client side finds the server: ``$XDG_CONFIG_HOME/sandtree/config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from sandtree.errors import InvalidRequestError

__all__ = ["Connection", "client_config_path", "load_connection", "write_client_config"]

_URL_VAR = "SANDTREE_URL"
_TOKEN_VAR = "SANDTREE_TOKEN"


def client_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/sandtree/config.json`` (``~/.config`` when unset)."""
    xdg = (os.environ if environ is None else environ).get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "sandtree" / "config.json"


def write_client_config(url: str, token: str, *, path: Path | None = None) -> Path:
    """Write ``{"url", "token"}`` (mode 0600) so the CLI and MCP server need no flags."""
    target = path or client_config_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url, "token": token}, f)
    os.replace(tmp, target)
    return target


@dataclasses.dataclass(frozen=True, kw_only=True)
class Connection:
    """Where a client finds its server: a base URL (no ``/v1``) and a bearer token."""

    url: str
    token: str | None = None
    #: Where the values came from, for messages: "flags", "environment", or a config path.
    source: str = "flags"


def load_connection(
    *, url: str | None = None, token: str | None = None, environ: Mapping[str, str]
) -> Connection | None:
    """Resolve the server from, in order: explicit values, ``SANDTREE_URL``/``SANDTREE_TOKEN``,
    the client config ``sandtree serve`` writes. None when nothing names a server.

    Raises:
        InvalidRequestError: the config file exists but is not the JSON it should be.
    """
    if url:
        return Connection(url=url.rstrip("/"), token=token or environ.get(_TOKEN_VAR))
    if environ.get(_URL_VAR):
        return Connection(
            url=environ[_URL_VAR].rstrip("/"),
            token=token or environ.get(_TOKEN_VAR),
            source="environment",
        )
    path = client_config_path(environ)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found_url, found_token = data["url"], data.get("token")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequestError(
            f"{path} is not a sandtree client config ({exc}); delete it or run "
            "`sandtree serve` again to rewrite it"
        ) from None
    return Connection(
        url=str(found_url).rstrip("/"),
        token=token or environ.get(_TOKEN_VAR) or found_token,
        source=str(path),
    )
