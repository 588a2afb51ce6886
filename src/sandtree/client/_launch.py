"""Finding the sandtree server for the CLI and the MCP server, or starting the embedded one.

Order: ``--url``/``--token``, ``SANDTREE_URL``/``SANDTREE_TOKEN``, the client config that
``sandtree serve`` writes. With none, ``sandtree serve`` is started in the background on the
default data directory (it writes that config, so the next start finds it). It runs in its
own session: stopping the MCP server never stops the sandboxes it started. Its pid (also
its process group) goes to ``<data-dir>/serve.pid`` and its output to ``<data-dir>/serve.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from sandtree._datadir import private_dir, private_file
from sandtree.client._config import Connection, load_connection
from sandtree.config import Settings
from sandtree.errors import ServerUnavailableError

__all__ = ["default_state_dir", "resolve_server"]

_READY_SECONDS = 60.0


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/openapi.json", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def _write_pid(path: Path, pid: int) -> None:
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n", encoding="utf-8")
    os.replace(tmp, path)


def _start_embedded(settings: Settings) -> Connection:
    url = f"http://{settings.host}:{settings.port}"
    private_dir(settings.data_dir)
    log = private_file(settings.data_dir / "serve.log")  # the server's output: its alone too
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandtree", "serve", "--data-dir", str(settings.data_dir),
             "--host", settings.host, "--port", str(settings.port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives this MCP server, as its work must
        )  # fmt: skip
    # Its own session: the pid is also its process group, what `kill -- -PID` stops.
    _write_pid(settings.data_dir / "serve.pid", process.pid)
    deadline = time.monotonic() + _READY_SECONDS
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ServerUnavailableError(
                f"the embedded sandtree server did not start on {url}: "
                + (" | ".join(tail) or "no output")
                + f" (full log: {log}); start one with `sandtree serve` and pass --url"
            )
        time.sleep(0.1)
    token_file = settings.data_dir / "admin-token"
    token = token_file.read_text().strip() if token_file.is_file() else None
    return Connection(url=url, token=token, source=f"embedded server ({settings.data_dir})")


def resolve_server(
    *, url: str | None, token: str | None, environ: Mapping[str, str] | None = None
) -> Connection:
    """The server to talk to, starting the embedded one when nothing names a server (or the
    configured local one is down)."""
    env = os.environ if environ is None else environ
    found = load_connection(url=url, token=token, environ=env)
    if found is not None and (found.source in ("flags", "environment") or _answers(found.url)):
        return found
    settings = Settings.from_env(env)
    if found is not None:
        # The config names a local server that is not running: start it where it was.
        parts = urlsplit(found.url)
        local = parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None
        if not local:
            raise ServerUnavailableError(
                f"the sandtree server at {found.url} (from {found.source}) is not reachable"
            )
        settings = Settings.from_env(env, host=parts.hostname, port=parts.port)
    started = _start_embedded(settings)
    if found is not None and found.token and started.token is None:
        return Connection(url=started.url, token=found.token, source=started.source)
    return started


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the MCP server keeps its caches: ``$XDG_STATE_HOME/sandtree/mcp``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sandtree" / "mcp"
