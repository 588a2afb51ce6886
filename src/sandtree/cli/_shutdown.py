"""Serving until a stop signal, with a deadline on the shutdown that follows.

uvicorn stops on SIGTERM or Ctrl-C once its requests and the app's shutdown are done, and the
interpreter then waits for every thread of the default executor before it exits. A thread
blocked in the kernel (a read of something that never answers) would make that wait last for
ever, and the server would ignore every further SIGTERM. So the first stop signal also starts
a clock; when it runs out the process exits, printing what each thread was doing.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

__all__ = ["EXIT_SHUTDOWN_TIMEOUT", "DeadlineServer", "serve_until_stopped"]

#: The exit status when the shutdown ran out of time (a clean one re-raises the signal).
EXIT_SHUTDOWN_TIMEOUT = 70  # EX_SOFTWARE
#: uvicorn's exit status when the server never started (it failed to bind or to start up).
_STARTUP_FAILURE = 3


class DeadlineServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose shutdown lasts at most ``deadline`` seconds from the first
    stop signal; past that, ``exit(EXIT_SHUTDOWN_TIMEOUT)`` (``os._exit``: no thread joins)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        deadline: float,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        super().__init__(config)
        self.deadline = deadline
        self._exit = exit
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.deadline, self._give_up)
            self._timer.daemon = True
            self._timer.name = "sandtree-shutdown-deadline"
            self._timer.start()
        super().handle_exit(sig, frame)

    def _give_up(self) -> None:
        sys.stderr.write(
            f"sandtree: the shutdown took more than {self.deadline:g} s (shutdown_timeout); "
            "exiting now. What each thread was doing:\n"
        )
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self._exit(EXIT_SHUTDOWN_TIMEOUT)


def serve_until_stopped(config: uvicorn.Config, *, deadline: float) -> None:
    """Run ``config``'s app until a stop signal; the shutdown after it lasts at most
    ``deadline`` seconds. Exits with uvicorn's status 3 if the server never started."""
    config.load_app()
    server = DeadlineServer(config, deadline=deadline)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a stop signal like SIGTERM
        server.run()
    if not server.started:
        sys.exit(_STARTUP_FAILURE)
