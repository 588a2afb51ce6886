"""The CLI as a user runs it, for the CLI tests: ``python -m sandtree`` in a child process
with a server named in its environment, its output read line by line as it is written."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from sandtree.testing import ServerProcess

__all__ = ["DEADLINE", "Background", "Sandtree", "kept"]

#: How long a CLI command, or a line of its output, may take before a test gives up.
DEADLINE = 60.0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A ``sandtree`` running in the background; its stdout read line by line as it is
    written, each line awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self, stream: IO[str]) -> None:
        self._stderr.extend(stream)

    def line(self, deadline: float = DEADLINE) -> str:
        """The next line of stdout; AssertionError when it ended or after ``deadline`` s."""
        try:
            line = self._lines.get(timeout=deadline)
        except queue.Empty:
            raise AssertionError(f"no output line within {deadline} s") from None
        if line is None:
            raise AssertionError("the output ended")
        return line

    def finish(self, deadline: float = DEADLINE) -> tuple[int, str, str]:
        """Wait for the end; the exit code, the rest of stdout and all of stderr."""
        code = self.proc.wait(timeout=deadline)
        for reader in self._readers:
            reader.join(timeout=deadline)  # the pipes reach EOF once the process is gone
        rest = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                rest.append(line)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code, "".join(rest), "".join(self._stderr)


class Sandtree:
    """``python -m sandtree`` with the server's URL and token, a session key and private
    XDG directories in its environment; it runs in ``cwd``."""

    def __init__(self, server: ServerProcess, home: Path) -> None:
        self.server = server
        self.cwd = home / "work"
        self.state_home = home / "state"
        self.cwd.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDTREE_")}
        self.env = {
            **env,
            "SANDTREE_URL": server.url,
            "SANDTREE_TOKEN": server.admin_token,
            "SANDTREE_SESSION": "test",
            "XDG_STATE_HOME": str(self.state_home),
            "XDG_CONFIG_HOME": str(home / "client-config"),
        }

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``sandtree ARGS`` to its end."""
        return subprocess.run(
            [sys.executable, "-m", "sandtree", *args],
            env=self.env if env is None else env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )

    def ok(self, *args: str) -> str:
        """Run ``sandtree ARGS``, check it succeeded without a word on stderr; its stdout."""
        done = self(*args)
        assert (done.returncode, done.stderr) == (0, ""), done
        return done.stdout

    def json(self, *args: str) -> Any:
        """Run ``sandtree ARGS`` (which should include ``--json``); its output, parsed."""
        done = self(*args)
        assert done.returncode == 0, done
        return json.loads(done.stdout)

    @contextlib.contextmanager
    def background(self, *args: str) -> Iterator[Background]:
        """``sandtree ARGS`` started in the background (killed if still running at the end)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandtree", *args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell's background job (`./.ci/run &`) ignores SIGINT, and an ignored signal is
            # inherited: Python would then never raise KeyboardInterrupt for a test's Ctrl-C.
            preexec_fn=_default_sigint,
        )
        child = Background(proc)
        try:
            yield child
        finally:
            if proc.poll() is None:
                proc.kill()
            child.finish()

    def spawn(
        self,
        command: str,
        image: str = "tag:busybox:latest",
        *,
        timeout: int = 60,
        stdin_open: bool = False,
        **fields: Any,
    ) -> str:
        """Start ``command`` (a shell line) through the REST API; its operation id. With
        ``stdin_open`` its stdin stays open for ``feed``; ``fields`` go into the request."""
        body: dict[str, Any] = {"command": command, "image": image, "shell": True,
                                "timeout": timeout, **fields}  # fmt: skip
        if stdin_open:
            body["stdin"] = {"value": "", "close": False}
        return str(self._api("POST", "/instances", body).json()["uuid"])

    def feed(self, op_id: str, text: str, *, close: bool = False) -> None:
        """Write ``text`` to the stdin of the operation's command."""
        body = {"value": text, "close": close}
        self._api("POST", f"/operations/{op_id}/subprocesses/1/stdin", body)

    def _api(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        answer = httpx.request(
            method,
            f"{self.server.url}/v1{path}",
            headers={"Authorization": f"Bearer {self.server.admin_token}"},
            json=body,
            timeout=DEADLINE,
        )
        answer.raise_for_status()
        return answer

    def image(self, ref: str) -> str:
        """The UUID of the image ``ref`` names (a UUID or tag:NAME)."""
        return str(self.json("images", "inspect", ref, "--json")["uuid"])


def kept(stderr: str) -> str:
    """The image UUID ``sandtree run --keep`` reported on stderr."""
    found = re.search(r"^kept ([0-9a-f-]{36})", stderr, re.MULTILINE)
    assert found is not None, stderr
    return found.group(1)
