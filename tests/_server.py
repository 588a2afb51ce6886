"""A real ``sandtree serve`` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["Server"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, data_dir: Path, config_home: Path) -> None:
        self.data_dir = data_dir
        self.config_home = config_home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandtree", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )  # fmt: skip
        self.output: list[str] = []
        self._drainer = threading.Thread(target=self._drain, daemon=True)

    def wait_until_ready(self) -> None:
        """Read the server's output until uvicorn says startup is complete (or it dies)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "Application startup complete" in line:
                # Keep reading: a full pipe would block the server on its next log line.
                self._drainer.start()
                return
        raise AssertionError("sandtree serve exited before it was ready:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down cleanly (uvicorn re-raises the signal
        after its shutdown, so the status is -15 either way)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        if self._drainer.is_alive():
            self._drainer.join(timeout=10)  # the pipe reaches EOF once the process is gone
        if self.process.stdout is not None:
            self.process.stdout.close()
        return any("Application shutdown complete" in line for line in self.output)
