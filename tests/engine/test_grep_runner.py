"""Where greps run: a few at once per server and per namespace (429 past that, at once), in
their own threads, each keeping its place until its thread has returned."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from sandtree.config import Settings
from sandtree.engine._grep_runner import GrepRunner
from sandtree.errors import TooManyRequestsError

pytestmark = pytest.mark.anyio


class _Held:
    """Searches that block until released, and report their thread and stop event."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[threading.Event] = []
        self.threads: list[str] = []

    def search(self) -> Callable[[threading.Event], str]:
        started = threading.Event()
        self.started.append(started)

        def run(stop: threading.Event) -> str:
            self.threads.append(threading.current_thread().name)
            started.set()
            while not (self.release.is_set() or stop.is_set()):
                stop.wait(0.01)
            return "stopped" if stop.is_set() else "done"

        return run


@pytest.fixture
async def runner() -> AsyncIterator[GrepRunner]:
    settings = Settings(grep_concurrency=3, grep_per_namespace=2, grep_timeout=10.0)
    grep_runner = GrepRunner(settings)
    yield grep_runner
    grep_runner.close()


def _never(stop: threading.Event) -> str:
    raise AssertionError("a refused grep must not run")


async def _started(held: _Held, count: int) -> None:
    for event in held.started[:count]:
        assert await asyncio.to_thread(event.wait, 10)


async def test_a_namespace_past_its_limit_is_refused_at_once_while_others_still_run(
    runner: GrepRunner,
) -> None:
    held = _Held()
    alice = [asyncio.create_task(runner.run("alice", held.search())) for _ in range(2)]
    await _started(held, 2)

    with pytest.raises(TooManyRequestsError, match="this namespace already runs 2 greps"):
        await runner.run("alice", _never)
    bob = asyncio.create_task(runner.run("bob", held.search()))
    await _started(held, 3)
    held.release.set()

    assert await asyncio.gather(*alice, bob) == ["done", "done", "done"]
    assert all(name.startswith("sandtree-grep") for name in held.threads)


async def test_the_server_wide_limit_refuses_any_namespace(runner: GrepRunner) -> None:
    held = _Held()
    running = [
        asyncio.create_task(runner.run(ns, held.search())) for ns in ("alice", "bob", "carol")
    ]
    await _started(held, 3)

    with pytest.raises(TooManyRequestsError, match=r"the server already runs 3 greps.*retry"):
        await runner.run("dave", _never)
    held.release.set()
    await asyncio.gather(*running)
    assert await runner.run("dave", lambda stop: "served") == "served"


async def test_a_cancelled_grep_is_stopped_and_keeps_its_place_until_its_thread_returns(
    runner: GrepRunner,
) -> None:
    seen_stop = threading.Event()
    may_return = threading.Event()
    started = threading.Event()

    def stubborn(stop: threading.Event) -> str:
        started.set()
        stop.wait(10)
        if stop.is_set():
            seen_stop.set()
        may_return.wait(10)
        return "late"

    held = _Held()
    first = asyncio.create_task(runner.run("alice", stubborn))
    second = asyncio.create_task(runner.run("alice", held.search()))
    assert await asyncio.to_thread(started.wait, 10)
    await _started(held, 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    assert await asyncio.to_thread(seen_stop.wait, 10)
    with pytest.raises(TooManyRequestsError):  # the stopped search has not returned yet
        await runner.run("alice", _never)
    may_return.set()
    held.release.set()
    await second
    for _ in range(200):  # the place comes back once the thread's future is done
        try:
            assert await runner.run("alice", lambda stop: "again") == "again"
            break
        except TooManyRequestsError:
            await asyncio.sleep(0.01)
    else:
        raise AssertionError("the cancelled grep's place never came back")


async def test_closing_stops_running_greps(runner: GrepRunner) -> None:
    held = _Held()
    running = asyncio.create_task(runner.run("alice", held.search()))
    await _started(held, 1)

    runner.close()

    assert await running == "stopped"
