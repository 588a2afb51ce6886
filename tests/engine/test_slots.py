"""The worker pool's slots: bounded, shared between namespaces, never lost to a cancel."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from sandtree.engine._slots import FairSlots, default_share

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # FairSlots is asyncio's (the engine's loop)


async def _take(
    slots: FairSlots, namespace: str, cancel: asyncio.Event | None = None
) -> asyncio.Task[bool]:
    """A waiter for a slot, started and given its turn to queue (and maybe be granted:
    grants are decided at once, so ``held`` tells who has a slot)."""
    if cancel is None:
        cancel = asyncio.Event()
    task = asyncio.ensure_future(slots.acquire(namespace, cancel))
    await asyncio.sleep(0)
    return task


@pytest.mark.parametrize(("total", "share"), [(1, 1), (2, 1), (8, 7)])
def test_the_default_share_is_all_slots_but_one_and_at_least_one(total: int, share: int) -> None:
    assert default_share(total) == share
    assert FairSlots(total).share == share


def test_a_share_larger_than_the_pool_is_the_pool() -> None:
    assert FairSlots(2, share=5).share == 2


async def test_a_namespace_past_its_share_waits_while_another_is_granted() -> None:
    slots = FairSlots(3)
    alice = [await _take(slots, "alice") for _ in range(3)]

    assert slots.held("alice") == 2
    bob = await _take(slots, "bob")
    assert slots.held("bob") == 1
    slots.release("alice")
    assert slots.held("alice") == 2  # her third got the slot her first gave back
    with anyio.fail_after(5):
        assert await asyncio.gather(*alice, bob) == [True] * 4


async def test_with_one_slot_namespaces_take_turns() -> None:
    slots = FairSlots(1)
    alice = [await _take(slots, "alice") for _ in range(2)]
    bob = await _take(slots, "bob")

    slots.release("alice")

    assert slots.held("bob") == 1  # bob before alice's second, which queued earlier
    assert slots.held("alice") == 0
    slots.release("bob")
    assert slots.held("alice") == 1
    with anyio.fail_after(5):
        assert await asyncio.gather(*alice, bob) == [True] * 3


async def test_a_waiter_cancelled_before_its_turn_leaves_the_line() -> None:
    slots = FairSlots(1)
    await _take(slots, "alice")
    cancel = asyncio.Event()
    bob = await _take(slots, "bob", cancel)

    cancel.set()
    with anyio.fail_after(5):
        assert await bob is False
    slots.release("alice")

    assert slots.held("bob") == 0
    carol = await _take(slots, "carol")
    assert slots.held("carol") == 1  # the slot was not kept for bob's abandoned place
    with anyio.fail_after(5):
        assert await carol is True


async def test_a_slot_granted_in_the_turn_its_waiter_is_cancelled_is_handed_on() -> None:
    slots = FairSlots(1)
    await _take(slots, "alice")
    cancel = asyncio.Event()
    bob = await _take(slots, "bob", cancel)
    carol = await _take(slots, "carol")

    slots.release("alice")  # grants bob ...
    cancel.set()  # ... who gives up before he runs again

    with anyio.fail_after(5):
        assert await bob is False
        assert await carol is True
    assert slots.held("bob") == 0
    assert slots.held("carol") == 1
