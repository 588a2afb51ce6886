"""A stop signal ends the server within its shutdown deadline, even with a thread blocked."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sandtree.cli._shutdown import EXIT_SHUTDOWN_TIMEOUT

# A server that gets stuck on open() of a FIFO nobody writes to, where argv[3] says: on the
# event loop itself once started (the finding: every request and every SIGTERM ignored), or
# in a worker thread its shutdown waits for (as the engine's close waits for clean-ups).
_SERVER = """
import asyncio, contextlib, sys
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from sandtree.cli._shutdown import serve_until_stopped

fifo, deadline, where = sys.argv[1], float(sys.argv[2]), sys.argv[3]

async def freeze(request):
    print("FROZEN", flush=True)
    open(fifo)

@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    if where == "shutdown":
        await asyncio.get_running_loop().run_in_executor(None, open, fifo)

app = Starlette(routes=[Route("/freeze", freeze)], lifespan=lifespan)
config = uvicorn.Config(app, host="127.0.0.1", port=0, timeout_graceful_shutdown=1)
serve_until_stopped(config, deadline=deadline)
"""


def _read_until(process: subprocess.Popen[bytes], marker: str, within: float = 30) -> str:
    """The server's output up to ``marker`` at least (fails past ``within`` s). Read from
    the unbuffered pipe, so no line sits in a buffer the selector cannot see."""
    assert process.stdout is not None
    end = time.monotonic() + within
    seen = ""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while marker not in seen:
            left = end - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                raise AssertionError(f"no {marker!r} from the server:\n{seen}")
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the server exited before {marker!r}:\n{seen}")
            seen += chunk.decode(errors="replace")
    return seen


@pytest.mark.parametrize("where", ["loop", "shutdown"])
def test_sigterm_ends_a_server_stuck_for_ever_within_its_shutdown_deadline(
    tmp_path: Path, where: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(fifo), "1.0", where],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )
    try:
        started = _read_until(process, "Uvicorn running on")
        if where == "loop":
            url = re.search(r"http://[0-9.:]+", started)
            assert url is not None, started
            # The request never gets an answer: the loop is frozen from then on.
            threading.Thread(target=_get, args=(url[0] + "/freeze",), daemon=True).start()
            _read_until(process, "FROZEN")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        rest = process.stdout.read() if process.stdout is not None else b""
        output = rest.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert code == EXIT_SHUTDOWN_TIMEOUT, output
    assert "the shutdown took more than 1 s" in output
    assert "Thread" in output  # what each thread was doing, for the operator


def _get(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=30)
