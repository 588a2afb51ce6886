"""The worker pool's slots, shared fairly between namespaces.

Policy (one tenant's flood must not delay another tenant's first run):

* at most ``total`` operations hold a slot at once;
* one namespace holds at most ``share`` of them (by default ``total - 1``, at least 1), so
  while one tenant keeps the pool busy a slot stays free for the next tenant that asks,
  which starts at once instead of waiting for the flood's runs to end;
* a freed slot goes to the waiting namespace holding the fewest slots, ties to the one
  served longest ago (round-robin), and within a namespace first come, first served.

With ``total == 1`` nothing can be set aside: namespaces then take turns.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Any

__all__ = ["FairSlots", "default_share"]


def default_share(total: int) -> int:
    """Slots one namespace may hold when the operator sets no share: all but one."""
    return max(1, total - 1)


class FairSlots:
    """Slots of a bounded pool, granted per namespace (see the module's policy).

    Every method runs on the event loop; grants are decided synchronously, so a waiter
    removed in the same turn it was granted is never lost.
    """

    def __init__(self, total: int, *, share: int | None = None) -> None:
        if total < 1:
            raise ValueError("a pool needs at least one slot")
        self._total = total
        self._share = min(total, share if share else default_share(total))
        self._held: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._served: dict[str, int] = {}
        self._turn = itertools.count()

    @property
    def share(self) -> int:
        return self._share

    def held(self, namespace: str) -> int:
        """How many slots ``namespace`` holds now."""
        return self._held[namespace]

    async def acquire(self, namespace: str, cancel: asyncio.Event) -> bool:
        """Wait for a slot for ``namespace``; False (and no slot held) if cancelled first."""
        grant: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(namespace, collections.deque()).append(grant)
        self._dispatch()
        cancelled: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
        either: set[asyncio.Future[Any]] = {grant, cancelled}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the waiting task itself was cancelled (shutdown)
            self._abandon(namespace, grant)
            raise
        finally:
            cancelled.cancel()
        if cancel.is_set():
            self._abandon(namespace, grant)
            return False
        return True

    def release(self, namespace: str) -> None:
        """Give back one of ``namespace``'s slots and hand it on."""
        self._held[namespace] -= 1
        if self._held[namespace] <= 0:
            del self._held[namespace]
        self._dispatch()

    def _abandon(self, namespace: str, grant: asyncio.Future[None]) -> None:
        """Give up a wait: hand back the slot if it was granted meanwhile, else leave the line."""
        if grant.done() and not grant.cancelled():
            self.release(namespace)
            return
        grant.cancel()
        queue = self._waiting.get(namespace)
        if queue is not None and grant in queue:
            queue.remove(grant)
            if not queue:
                del self._waiting[namespace]

    def _dispatch(self) -> None:
        while sum(self._held.values()) < self._total:
            eligible = [ns for ns in self._waiting if self._held[ns] < self._share]
            if not eligible:
                return
            namespace = min(eligible, key=lambda ns: (self._held[ns], self._served.get(ns, -1)))
            queue = self._waiting[namespace]
            grant = queue.popleft()
            if not queue:
                del self._waiting[namespace]
            if grant.done():  # its waiter gave up; it was removed too late to matter
                continue
            self._held[namespace] += 1
            self._served[namespace] = next(self._turn)
            grant.set_result(None)
