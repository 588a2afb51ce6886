"""Where greps run: their own few threads, a bounded number at once, per server and per
namespace, each stopped at its deadline.

A grep is CPU work of up to ``grep_timeout`` seconds. In the default executor a handful of
them would hold the threads that runs, inspection and diffs of every tenant need; queued, one
tenant's burst would delay everyone's greps. So a grep gets a thread of its own pool or, when
``grep_concurrency`` are running (or ``grep_per_namespace`` of its namespace), a 429 at once.
Its place is given back only when its thread has returned: a caller that goes away stops the
search (``stop`` is set) but cannot start another while the first still runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sandtree.config import Settings
from sandtree.errors import TooManyRequestsError

__all__ = ["GrepRunner"]

_T = TypeVar("_T")


class GrepRunner:
    """Runs greps in a pool of ``grep_concurrency`` threads, refusing those over the limits."""

    def __init__(self, settings: Settings) -> None:
        self._total = settings.grep_concurrency
        self._per_namespace = settings.grep_per_namespace
        self._timeout = settings.grep_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._total, thread_name_prefix="sandtree-grep"
        )
        # Only touched on the event loop (admission, and the futures' done callbacks).
        self._running: dict[str, int] = {}
        self._stops: set[threading.Event] = set()

    async def run(self, namespace: str, search: Callable[[threading.Event], _T]) -> _T:
        """``search(stop)`` in a grep thread, for ``namespace``.

        Raises ``TooManyRequestsError`` when the server or the namespace already runs as many
        greps as it may. Cancelling the call sets ``stop``; the place is kept until the search
        has returned.
        """
        busy = sum(self._running.values())
        mine = self._running.get(namespace, 0)
        if busy >= self._total or mine >= self._per_namespace:
            whose = "this namespace" if mine >= self._per_namespace else "the server"
            limit = self._per_namespace if mine >= self._per_namespace else self._total
            raise TooManyRequestsError(
                f"{whose} already runs {limit} greps, as many as it may at once; retry when one "
                f"has answered (each takes at most {self._timeout:g} s), or narrow the search "
                "with path and glob so that each ends sooner"
            )
        stop = threading.Event()
        self._running[namespace] = mine + 1
        self._stops.add(stop)
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, search, stop)
        except RuntimeError:  # the pool is shut down: the engine is closing
            self._release(namespace, stop)
            raise
        future.add_done_callback(lambda _: self._release(namespace, stop))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            future.add_done_callback(_retrieve)
            raise

    def _release(self, namespace: str, stop: threading.Event) -> None:
        self._stops.discard(stop)
        left = self._running.get(namespace, 0) - 1
        if left > 0:
            self._running[namespace] = left
        else:
            self._running.pop(namespace, None)

    def close(self) -> None:
        """Stop every running grep and let the pool's threads go."""
        for stop in list(self._stops):
            stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Collect an abandoned grep's outcome so that asyncio does not report it as lost."""
    if not future.cancelled():
        future.exception()
