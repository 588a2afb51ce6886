"""Operations: their life cycle, the worker pool, cancel, wait, listing and the event log."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from sandtree.engine import (
    Engine,
    ImageRecord,
    OperationEvent,
    OperationKind,
    OperationQuery,
    OperationRecord,
    OperationStatus,
    RunSpec,
)
from sandtree.engine.runtime import FakeRuntime
from sandtree.engine.runtime._base import SandboxSpec
from sandtree.engine.runtime._fake import FakeSandbox
from sandtree.errors import ConflictError, OperationNotFoundError
from sandtree.testing import make_engine

pytestmark = pytest.mark.anyio


class KillRecordingRuntime(FakeRuntime):
    """The fake runtime, remembering which sandboxes were started and which were killed."""

    def __init__(self) -> None:
        super().__init__()
        self.sandboxes: list[FakeSandbox] = []
        self.killed: list[int] = []

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox = await super().start(spec)
        original = sandbox.kill

        async def kill() -> None:
            self.killed.append(sandbox.pid)
            await original()

        sandbox.kill = kill  # type: ignore[method-assign]
        self.sandboxes.append(sandbox)
        return sandbox


async def _wait(engine: Engine, op: OperationRecord) -> OperationRecord:
    with anyio.fail_after(10):
        return await engine.wait_operation(op)


async def _until_event(engine: Engine, op: OperationRecord, kind: str) -> OperationEvent:
    """Follow ``op`` live until an event of type ``kind`` arrives."""
    with anyio.fail_after(10):
        follow = cast(AsyncGenerator[OperationEvent, None], engine.follow_events(op))
        async with aclosing(follow) as events:
            async for event in events:
                if event.type == kind:
                    return event
    raise AssertionError(f"operation {op.uuid} ended without a {kind!r} event")


def _spec(command: str, **fields: Any) -> RunSpec:
    return RunSpec(image="tag:base", command=command, shell=True, **fields)


@pytest.fixture
async def runtime() -> KillRecordingRuntime:
    return KillRecordingRuntime()


@pytest.fixture
async def engine(tmp_path: Path, runtime: KillRecordingRuntime) -> AsyncIterator[Engine]:
    async with make_engine(tmp_path / "data", runtime=runtime) as eng:
        yield eng


@pytest.fixture
async def serial(tmp_path: Path, runtime: KillRecordingRuntime) -> AsyncIterator[Engine]:
    """An engine that executes one operation at a time."""
    async with make_engine(tmp_path / "serial", runtime=runtime, max_concurrency=1) as eng:
        yield eng


@pytest.fixture
async def serial_base(serial: Engine, rootfs: Path) -> ImageRecord:
    return await serial.import_local(rootfs, tag="base")


# -- life cycle ------------------------------------------------------------------------------


async def test_spawn_returns_a_pending_operation_that_ends_in_success(
    engine: Engine, base: ImageRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    transitions: list[OperationStatus] = []
    update = engine.store.update_operation

    def recording_update(uuid: str, **fields: Any) -> None:
        if "status" in fields:
            transitions.append(OperationStatus(fields["status"]))
        update(uuid, **fields)

    monkeypatch.setattr(engine.store, "update_operation", recording_update)

    op = await engine.spawn(_spec("echo hi"), request={"command": "echo hi"})

    assert op.status == OperationStatus.PENDING
    assert op.kind == OperationKind.INSTANCE
    assert op.image == base.uuid
    assert op.started_at is None
    assert op.finished_at is None
    done = await _wait(engine, op)
    assert transitions == [
        OperationStatus.ASSIGNED,
        OperationStatus.EXECUTING,
        OperationStatus.SUCCESS,
    ]
    assert done.status == OperationStatus.SUCCESS
    assert done.error is None
    assert done.request == {"command": "echo hi"}
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.duration is not None
    assert done.duration >= 0
    assert engine.get_operation(op.uuid) == done


async def test_get_operation_of_unknown_or_foreign_id_is_not_found(
    engine: Engine, base: ImageRecord
) -> None:
    op = await engine.spawn(_spec("echo hi"))
    await _wait(engine, op)

    with pytest.raises(OperationNotFoundError):
        engine.get_operation("00000000-0000-4000-8000-000000000000")
    with pytest.raises(OperationNotFoundError):
        engine.get_operation("not-a-uuid")
    with pytest.raises(OperationNotFoundError):
        engine.get_operation(op.uuid, namespaces=("other",))


async def test_failed_run_keeps_its_result_document(engine: Engine, base: ImageRecord) -> None:
    op = await engine.spawn(_spec("echo partial; oom"))

    done = await _wait(engine, op)

    assert done.status == OperationStatus.FAILED
    assert done.result is not None
    assert done.result["stdout"]["value"] == "partial\n"
    assert done.result_image is None


# -- the worker pool -------------------------------------------------------------------------


async def test_with_one_slot_the_next_operation_waits_pending(
    serial: Engine, serial_base: ImageRecord
) -> None:
    blocker = await serial.spawn(_spec("block"))
    await _until_event(serial, blocker, "spawn")
    queued = await serial.spawn(_spec("echo queued"))

    assert serial.get_operation(blocker.uuid).status == OperationStatus.EXECUTING
    still = await serial.wait_operation(queued, timeout=0.2)
    assert still.status == OperationStatus.PENDING
    assert still.started_at is None

    cancelled = await serial.cancel_operation(blocker)
    assert cancelled.status == OperationStatus.CANCELLED
    done = await _wait(serial, queued)
    assert done.status == OperationStatus.SUCCESS
    assert done.result is not None
    assert done.result["stdout"]["value"] == "queued\n"


async def test_no_more_operations_execute_at_once_than_max_concurrency(
    tmp_path: Path, rootfs: Path
) -> None:
    # One namespace may use both slots here: the bound under test is the pool's, not the
    # per-namespace share (tested below with the default share).
    async with make_engine(
        tmp_path / "pair", max_concurrency=2, namespace_max_concurrency=2
    ) as engine:
        await engine.import_local(rootfs, tag="base")
        ops = [await engine.spawn(_spec("block")) for _ in range(3)]
        await _until_event(engine, ops[0], "spawn")
        await _until_event(engine, ops[1], "spawn")

        def statuses() -> list[OperationStatus]:
            return [engine.get_operation(op.uuid).status for op in ops]

        assert statuses() == [
            OperationStatus.EXECUTING,
            OperationStatus.EXECUTING,
            OperationStatus.PENDING,
        ]
        await engine.cancel_operation(ops[0])
        await _until_event(engine, ops[2], "spawn")
        assert statuses() == [
            OperationStatus.CANCELLED,
            OperationStatus.EXECUTING,
            OperationStatus.EXECUTING,
        ]
        for op in ops[1:]:
            await engine.cancel_operation(op)
        assert statuses() == [OperationStatus.CANCELLED] * 3


def _statuses(engine: Engine, ops: list[OperationRecord], namespace: str) -> list[str]:
    return [str(engine.get_operation(op.uuid, namespaces=(namespace,)).status) for op in ops]


async def _spawn_in(engine: Engine, namespace: str, command: str) -> OperationRecord:
    return await engine.spawn(_spec(command), namespace=namespace)


async def test_one_namespace_holds_all_slots_but_one_so_another_starts_at_once(
    tmp_path: Path, rootfs: Path
) -> None:
    async with make_engine(tmp_path / "fair", max_concurrency=3) as engine:
        await engine.import_local(rootfs, tag="base", namespace="public")
        flood = [await _spawn_in(engine, "alice", "block") for _ in range(4)]
        await _until_event(engine, flood[0], "spawn")
        await _until_event(engine, flood[1], "spawn")
        assert _statuses(engine, flood, "alice") == ["EXECUTING"] * 2 + ["PENDING"] * 2

        bob = await _spawn_in(engine, "bob", "block")
        await _until_event(engine, bob, "spawn")  # while alice's runs still hold their slots

        assert _statuses(engine, flood, "alice") == ["EXECUTING"] * 2 + ["PENDING"] * 2
        for op in [bob, *flood]:
            await engine.cancel_operation(op)


async def test_a_freed_slot_goes_to_the_waiting_namespace_holding_fewest_slots(
    tmp_path: Path, rootfs: Path
) -> None:
    async with make_engine(
        tmp_path / "turns", max_concurrency=2, namespace_max_concurrency=2
    ) as engine:
        await engine.import_local(rootfs, tag="base", namespace="public")
        running = [await _spawn_in(engine, "alice", "block") for _ in range(2)]
        for op in running:
            await _until_event(engine, op, "spawn")
        alice_next = await _spawn_in(engine, "alice", "block")  # queued first
        bob = await _spawn_in(engine, "bob", "block")  # queued second

        await engine.cancel_operation(running[0])
        await _until_event(engine, bob, "spawn")

        assert _statuses(engine, [alice_next], "alice") == ["PENDING"]
        await engine.cancel_operation(running[1])
        await _until_event(engine, alice_next, "spawn")  # and then alice's turn comes
        for op in (bob, alice_next):
            await engine.cancel_operation(op)


async def test_cancel_of_a_pending_operation_cancels_it_without_running_it(
    serial: Engine, serial_base: ImageRecord, runtime: KillRecordingRuntime
) -> None:
    blocker = await serial.spawn(_spec("block"))
    await _until_event(serial, blocker, "spawn")
    queued = await serial.spawn(_spec("write /tmp/ran yes"))

    # Cancelling must not wait for a worker slot to free up.
    with anyio.fail_after(5):
        cancelled = await serial.cancel_operation(queued)

    assert cancelled.status == OperationStatus.CANCELLED
    assert cancelled.error is not None
    assert "cancelled" in cancelled.error
    assert cancelled.started_at is None
    assert serial.get_operation(blocker.uuid).status == OperationStatus.EXECUTING
    await serial.cancel_operation(blocker)
    assert len(runtime.sandboxes) == 1  # only the blocker ever started
    events = [e async for e in serial.follow_events(queued, follow=False)]
    assert [e.type for e in events] == ["completion"]
    assert events[0].data["status"] == "CANCELLED"


async def test_cancel_of_a_running_operation_kills_its_sandbox(
    engine: Engine, base: ImageRecord, runtime: KillRecordingRuntime
) -> None:
    op = await engine.spawn(_spec("echo started; block; write /tmp/never x"))
    spawn = await _until_event(engine, op, "spawn")

    with anyio.fail_after(10):
        cancelled = await engine.cancel_operation(op)

    assert cancelled.status == OperationStatus.CANCELLED
    assert cancelled.error is not None
    assert "cancelled" in cancelled.error
    assert cancelled.result_image is None
    assert spawn.data["pid"] == 1  # as the sandbox sees it, never the host's pid
    assert runtime.killed == [sandbox.pid for sandbox in runtime.sandboxes]
    assert cancelled.result is not None
    assert cancelled.result["state"]["signal"] == 9
    assert cancelled.result["stdout"]["value"] == "started\n"
    events = [e async for e in engine.follow_events(op, follow=False)]
    assert next(e for e in events if e.type == "shutdown").data["reason"] == "signal"
    assert events[-1].type == "completion"
    assert events[-1].data["status"] == "CANCELLED"
    assert engine.lineage(base).children == []


async def test_cancel_of_a_finished_operation_is_a_conflict(
    engine: Engine, base: ImageRecord
) -> None:
    op = await engine.spawn(_spec("echo hi"))
    await _wait(engine, op)

    with pytest.raises(ConflictError):
        await engine.cancel_operation(op)
    assert engine.get_operation(op.uuid).status == OperationStatus.SUCCESS


async def test_wait_with_a_timeout_returns_a_running_operation_as_executing(
    engine: Engine, base: ImageRecord
) -> None:
    op = await engine.spawn(_spec("block"))
    await _until_event(engine, op, "spawn")

    with anyio.fail_after(10):
        current = await engine.wait_operation(op, timeout=0.1)

    assert current.status == OperationStatus.EXECUTING
    assert current.started_at is not None
    assert current.finished_at is None
    await engine.cancel_operation(op)


async def test_wait_on_a_finished_operation_returns_it_at_once(
    engine: Engine, base: ImageRecord
) -> None:
    op = await engine.spawn(_spec("echo hi"))
    first = await _wait(engine, op)

    with anyio.fail_after(1):
        again = await engine.wait_operation(op, timeout=30)

    assert again == first


# -- the event log ---------------------------------------------------------------------------


async def test_event_log_reread_after_completion_equals_what_was_followed_live(
    engine: Engine, base: ImageRecord
) -> None:
    op = await engine.spawn(_spec("echo one; echoerr two; cat; echo three", stdin=b"in\n"))

    with anyio.fail_after(10):
        live = [event async for event in engine.follow_events(op)]
    await _wait(engine, op)
    stored = [event async for event in engine.follow_events(op, follow=False)]
    followed_after = [event async for event in engine.follow_events(op)]

    assert live == stored == followed_after
    assert [e.id for e in live] == list(range(1, len(live) + 1))
    types = [e.type for e in live]
    assert types[:2] == ["init", "spawn"]
    assert types[-3:] == ["exit", "shutdown", "completion"]
    assert [e.data["value"] for e in live if e.type == "stdout"] == ["one\n", "in\n", "three\n"]
    assert [e.data["value"] for e in live if e.type == "stderr"] == ["two\n"]


async def test_completion_is_the_last_event_and_is_operation_scoped(
    engine: Engine, base: ImageRecord
) -> None:
    op = await engine.spawn(_spec("write /tmp/x y"))
    done = await _wait(engine, op)

    events = [e async for e in engine.follow_events(op, follow=False)]

    completion = events[-1]
    assert completion.type == "completion"
    assert completion.spid is None
    assert [e.type for e in events].count("completion") == 1
    assert completion.data["status"] == "SUCCESS"
    assert completion.data["result_image_uuid"] == done.result_image
    assert completion.data["error"] is None
    assert "spid" not in completion.to_json()


async def test_follow_after_an_id_resumes_from_there(engine: Engine, base: ImageRecord) -> None:
    op = await engine.spawn(_spec("echo a; echo b; echo c"))
    await _wait(engine, op)
    everything = [e async for e in engine.follow_events(op, follow=False)]

    resumed = [e async for e in engine.follow_events(op, after=3)]
    resumed_stored = [e async for e in engine.follow_events(op, after=3, follow=False)]

    assert resumed == resumed_stored == everything[3:]
    assert resumed[0].id == 4


async def test_follow_after_an_id_resumes_while_live(engine: Engine, base: ImageRecord) -> None:
    op = await engine.spawn(_spec("echo a; block"))
    await _until_event(engine, op, "stdout")
    seen: list[OperationEvent] = []

    async with anyio.create_task_group() as tg:

        async def follow() -> None:
            with anyio.fail_after(10):
                async for event in engine.follow_events(op, after=2):
                    seen.append(event)

        tg.start_soon(follow)
        await engine.cancel_operation(op)

    assert seen[0].id == 3
    assert seen[0].type == "stdout"
    assert seen[-1].type == "completion"
    assert seen[-1].data["status"] == "CANCELLED"


async def test_two_live_followers_see_the_same_events(engine: Engine, base: ImageRecord) -> None:
    op = await engine.spawn(_spec("block"))
    got: dict[str, list[OperationEvent]] = {"a": [], "b": []}

    async with anyio.create_task_group() as tg:

        async def follow(name: str) -> None:
            with anyio.fail_after(10):
                async for event in engine.follow_events(op):
                    got[name].append(event)

        tg.start_soon(follow, "a")
        tg.start_soon(follow, "b")
        await _until_event(engine, op, "spawn")
        await engine.cancel_operation(op)

    assert got["a"] == got["b"]
    assert got["a"][-1].type == "completion"


async def test_event_log_past_its_cap_drops_stream_events_but_keeps_service_events(
    tmp_path: Path, rootfs: Path
) -> None:
    async with make_engine(tmp_path / "capped", event_log_cap_bytes=10) as engine:
        await engine.import_local(rootfs, tag="base")
        op = await engine.spawn(_spec("echo 12345; echo 67890; echo dropped; echoerr also"))
        done = await _wait(engine, op)
        events = [e async for e in engine.follow_events(op, follow=False)]

    types = [e.type for e in events]
    assert [e.data["value"] for e in events if e.type == "stdout"] == ["12345\n"]
    assert types.count("size_cap") == 1
    assert "stderr" not in types
    assert types[-3:] == ["exit", "shutdown", "completion"]
    cap = next(e for e in events if e.type == "size_cap")
    assert cap.data == {"limit_bytes": 10, "file_size": 6}
    # The result document is not capped by the event log.
    assert done.result is not None
    assert done.result["stdout"]["value"] == "12345\n67890\ndropped\n"


async def test_wait_or_cancel_of_an_unknown_operation_is_not_found(
    engine: Engine, base: ImageRecord
) -> None:
    ghost = dataclasses.replace(
        await engine.spawn(_spec("echo hi")), uuid="33333333-3333-4333-8333-333333333333"
    )

    with pytest.raises(OperationNotFoundError):
        await engine.wait_operation(ghost, timeout=1)
    with pytest.raises(OperationNotFoundError):
        await engine.cancel_operation(ghost)


# -- listing ---------------------------------------------------------------------------------


async def test_list_operations_filters_by_status_and_kind(
    engine: Engine, base: ImageRecord
) -> None:
    ok = await _wait(engine, await engine.spawn(_spec("echo ok")))
    failed = await _wait(engine, await engine.spawn(_spec("oom")))
    engine.store.add_operation(
        OperationRecord(
            uuid="22222222-2222-4222-8222-222222222222",
            kind=OperationKind.IMAGE_IMPORT,
            status=OperationStatus.SUCCESS,
            created_at=ok.created_at,
        )
    )

    def uuids(**query: Any) -> set[str]:
        return {op.uuid for op in engine.list_operations(OperationQuery(**query))}

    assert uuids(status=OperationStatus.FAILED) == {failed.uuid}
    assert uuids(status=OperationStatus.SUCCESS, kind=OperationKind.INSTANCE) == {ok.uuid}
    assert uuids(kind=OperationKind.IMAGE_IMPORT) == {"22222222-2222-4222-8222-222222222222"}
    assert uuids(status=OperationStatus.PENDING) == set()
    assert uuids(namespaces=("other",)) == set()
    assert len(uuids()) == 3


async def test_list_operations_pages_newest_first(engine: Engine, base: ImageRecord) -> None:
    ops = []
    for i in range(5):
        ops.append(await _wait(engine, await engine.spawn(_spec(f"echo {i}"))))
    newest_first = [op.uuid for op in reversed(ops)]

    def page(limit: int, offset: int) -> list[str]:
        query = OperationQuery(limit=limit, offset=offset)
        return [op.uuid for op in engine.list_operations(query)]

    assert page(2, 0) == newest_first[:2]
    assert page(2, 2) == newest_first[2:4]
    assert page(2, 4) == newest_first[4:]
    assert page(2, 6) == []
    assert page(100, 0) == newest_first


async def test_list_operations_filters_by_creation_time(engine: Engine, base: ImageRecord) -> None:
    ops = []
    for i in range(3):
        ops.append(await _wait(engine, await engine.spawn(_spec(f"echo {i}"))))

    since = engine.list_operations(OperationQuery(since=ops[1].created_at))
    until = engine.list_operations(OperationQuery(until=ops[1].created_at))

    assert {op.uuid for op in since} == {ops[1].uuid, ops[2].uuid}
    assert {op.uuid for op in until} == {ops[0].uuid, ops[1].uuid}
