"""Operations: waiting for many (all or any, with a timeout that leaves work running), the
current state of one, listing with filters, cancelling, and detached work outliving the MCP
server."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client

from sandtree.engine import ImageRecord
from sandtree.mcp import build_server

from .conftest import Agent

pytestmark = pytest.mark.anyio

RUNNING = ("PENDING", "ASSIGNED", "EXECUTING")
UNKNOWN = "00000000-0000-4000-8000-000000000000"
#: The keys of one list_operations entry, as the reference answers them.
SUMMARY_KEYS = {
    "uuid",
    "kind",
    "status",
    "error",
    "created_at",
    "duration",
    "image_uuid",
    "result_image_uuid",
}


async def _start(agent: Agent, command: str, image: str) -> str:
    started = await agent.call("run", command=command, image=image, wait=False)
    return str(started["operation_id"])


async def _wait_ended(agent: Agent, *ids: str) -> dict[str, dict[str, object]]:
    """Wait (with a deadline) until every id has ended; their results."""
    with anyio.fail_after(30):
        waited = await agent.call("wait_operations", operation_ids=list(ids), timeout=30)
    assert waited["timed_out"] is False
    assert waited["completed"] == list(dict.fromkeys(ids))  # in the order asked, each once
    return dict(waited["results"])


async def test_wait_operations_in_mode_all_answers_every_result(
    agent: Agent, base: ImageRecord
) -> None:
    first = await _start(agent, "echo one", base.uuid)
    second = await _start(agent, "echo two; exit 4", base.uuid)
    waited = await agent.call("wait_operations", operation_ids=[first, second], mode="all")
    assert waited["timed_out"] is False
    assert waited["completed"] == [first, second]
    assert waited["pending"] == waited["cancelled"] == []
    assert waited["errors"] == {}
    assert waited["results"][first]["stdout"] == "one\n"
    assert waited["results"][second]["exit_code"] == 4
    assert waited["results"][second]["status"] == "SUCCESS"


async def test_wait_operations_in_mode_any_answers_the_first_and_leaves_the_rest_running(
    agent: Agent, base: ImageRecord
) -> None:
    slow = await _start(agent, "block", base.uuid)
    fast = await _start(agent, "echo fast", base.uuid)
    waited = await agent.call("wait_operations", operation_ids=[slow, fast], mode="any")
    assert waited["completed"] == [fast]
    assert waited["results"][fast]["stdout"] == "fast\n"
    assert waited["pending"] == [slow]
    assert waited["cancelled"] == []  # the reference cancels the others; we leave them be
    assert waited["timed_out"] is False
    assert (await agent.call("get_operation", operation_id=slow))["status"] in RUNNING
    await agent.call("cancel_operation", operation_id=slow)
    assert (await _wait_ended(agent, slow))[slow]["status"] == "CANCELLED"


async def test_a_wait_that_times_out_says_so_and_leaves_the_operation_running(
    agent: Agent, base: ImageRecord
) -> None:
    op_id = await _start(agent, "block", base.uuid)
    waited = await agent.call("wait_operations", operation_ids=[op_id], timeout=0.2)
    assert waited["timed_out"] is True
    assert waited["pending"] == [op_id]
    assert waited["results"] == {}
    assert waited["completed"] == waited["cancelled"] == []
    assert (await agent.call("get_operation", operation_id=op_id))["status"] in RUNNING
    cancelled = await agent.call("cancel_operation", operation_id=op_id)
    assert cancelled == {"cancelled": True, "operation_id": op_id}
    again = await agent.call("wait_operations", operation_ids=[op_id], timeout=30)
    assert again["timed_out"] is False
    assert again["cancelled"] == [op_id]
    assert again["results"][op_id]["status"] == "CANCELLED"


async def test_unknown_operation_ids_are_reported_in_errors_beside_real_results(
    agent: Agent, base: ImageRecord
) -> None:
    real = await _start(agent, "echo real", base.uuid)
    waited = await agent.call(
        "wait_operations", operation_ids=[UNKNOWN, real, "not-an-id"], timeout=30
    )
    assert waited["completed"] == [real]
    assert set(waited["errors"]) == {UNKNOWN, "not-an-id"}
    assert "list_operations" in waited["errors"][UNKNOWN]
    assert waited["pending"] == []
    assert waited["timed_out"] is False


async def test_in_mode_any_an_unknown_id_does_not_end_the_wait_the_first_finished_run_does(
    agent: Agent, base: ImageRecord
) -> None:
    fast = await _start(agent, "echo fast", base.uuid)
    waited = await agent.call(
        "wait_operations", operation_ids=[UNKNOWN, fast], mode="any", timeout=30
    )
    assert waited["completed"] == [fast]
    assert list(waited["errors"]) == [UNKNOWN]
    assert waited["pending"] == []
    assert waited["timed_out"] is False


async def test_in_mode_any_a_wait_with_only_unknown_ids_ends_without_timing_out(
    agent: Agent,
) -> None:
    waited = await agent.call("wait_operations", operation_ids=[UNKNOWN], mode="any")
    assert list(waited["errors"]) == [UNKNOWN]
    assert (waited["results"], waited["pending"], waited["timed_out"]) == ({}, [], False)


async def test_in_mode_any_a_wait_with_nothing_ending_in_time_times_out(
    agent: Agent, base: ImageRecord
) -> None:
    slow = await _start(agent, "block", base.uuid)
    waited = await agent.call(
        "wait_operations", operation_ids=[UNKNOWN, slow], mode="any", timeout=0.2
    )
    assert list(waited["errors"]) == [UNKNOWN]
    assert waited["pending"] == [slow]
    assert waited["timed_out"] is True
    await agent.call("cancel_operation", operation_id=slow)
    await _wait_ended(agent, slow)


async def test_in_mode_all_a_wait_that_times_out_keeps_the_results_that_came(
    agent: Agent, base: ImageRecord
) -> None:
    fast = await _start(agent, "echo fast", base.uuid)
    slow = await _start(agent, "block", base.uuid)
    await _wait_ended(agent, fast)
    waited = await agent.call("wait_operations", operation_ids=[fast, slow], timeout=0.2)
    assert waited["completed"] == [fast]
    assert waited["pending"] == [slow]
    assert waited["timed_out"] is True
    await agent.call("cancel_operation", operation_id=slow)
    await _wait_ended(agent, slow)


async def test_thirty_operations_waited_for_at_once_all_complete(
    agent: Agent, base: ImageRecord
) -> None:
    ids = [await _start(agent, f"echo {n}", base.uuid) for n in range(30)]
    results = await _wait_ended(agent, *ids, ids[0])  # a repeated id is waited for once
    assert len(results) == 30
    assert [results[op_id]["stdout"] for op_id in ids] == [f"{n}\n" for n in range(30)]


async def test_wait_operations_without_ids_is_an_error_saying_where_ids_come_from(
    agent: Agent,
) -> None:
    assert "run(wait=false)" in await agent.fail("wait_operations", operation_ids=[])


async def test_get_operation_answers_the_current_state_every_time(
    agent: Agent, base: ImageRecord
) -> None:
    op_id = await _start(agent, "echo working; block", base.uuid)
    running = await agent.call("get_operation", operation_id=op_id)
    assert running["status"] in RUNNING
    assert running["state"] == running["status"]
    assert running["exit_code"] is None
    await agent.call("cancel_operation", operation_id=op_id)
    await _wait_ended(agent, op_id)
    ended = await agent.call("get_operation", operation_id=op_id)
    assert ended["status"] == ended["state"] == "CANCELLED"
    assert agent.engine.get_operation(op_id).status == "CANCELLED"


async def test_get_operation_of_an_unknown_id_is_an_error_naming_list_operations(
    agent: Agent,
) -> None:
    assert "list_operations" in await agent.fail("get_operation", operation_id=UNKNOWN)
    assert "list_operations" in await agent.fail("get_operation", operation_id="bogus")


async def test_cancelling_an_ended_operation_changes_nothing_and_says_so(
    agent: Agent, base: ImageRecord
) -> None:
    done = await agent.call("run", command="echo done", image=base.uuid)
    answer = await agent.call("cancel_operation", operation_id=done["uuid"])
    assert answer == {"cancelled": False, "operation_id": done["uuid"], "status": "SUCCESS"}
    assert (await agent.call("get_operation", operation_id=done["uuid"]))["status"] == "SUCCESS"
    assert "list_operations" in await agent.fail("cancel_operation", operation_id=UNKNOWN)


async def test_list_operations_filters_by_status_and_type(agent: Agent, base: ImageRecord) -> None:
    ok = (await agent.call("run", command="echo ok", image=base.uuid))["uuid"]
    blocked = await _start(agent, "block", base.uuid)
    await agent.call("cancel_operation", operation_id=blocked)
    await _wait_ended(agent, blocked)
    # An import from a port nothing listens on fails at once, with no registry needed.
    with anyio.fail_after(30):
        failed = await agent.call("import_image", registry_url="docker://127.0.0.1:9/x/y")
    assert failed["kind"] == "image_import"
    assert failed["status"] == "FAILED"

    listed = (await agent.call("list_operations"))["operations"]
    assert [op["uuid"] for op in listed] == [failed["uuid"], blocked, ok]  # newest first
    assert all(set(op) >= SUMMARY_KEYS for op in listed)

    async def uuids(**filters: object) -> list[str]:
        return [op["uuid"] for op in (await agent.call("list_operations", **filters))["operations"]]

    assert await uuids(status="SUCCESS") == [ok]
    assert await uuids(status="CANCELLED") == [blocked]
    assert await uuids(status="FAILED") == [failed["uuid"]]
    assert await uuids(type="instance") == [blocked, ok]
    assert await uuids(type="image_import") == [failed["uuid"]]
    assert await uuids(type="instance", status="SUCCESS") == [ok]
    assert await uuids(limit=1) == [failed["uuid"]]
    assert await uuids(since="1h") == [failed["uuid"], blocked, ok]
    assert await uuids(since="2999-01-01T00:00:00+00:00") == []


async def test_list_operations_refuses_an_unknown_status(agent: Agent) -> None:
    message = await agent.fail("list_operations", status="running")
    assert "SUCCESS" in message


async def test_detached_runs_outlive_the_mcp_server_that_started_them(
    agent: Agent, base: ImageRecord
) -> None:
    async with Client(build_server(agent.mc)) as other:
        started = await other.call_tool(
            "run", {"command": "block", "image": base.uuid, "wait": False}
        )
        assert not started.is_error
        op_id = str(json.loads(started.content[0].text)["operation_id"])  # type: ignore[union-attr]
    assert agent.engine.get_operation(op_id).status in RUNNING
    await agent.call("cancel_operation", operation_id=op_id)
    assert (await _wait_ended(agent, op_id))[op_id]["status"] == "CANCELLED"
