"""Where the client side finds the server: ``$XDG_CONFIG_HOME/sandtree/config.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["client_config_path", "write_client_config"]


def client_config_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
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
