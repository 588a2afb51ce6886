"""Processes exec'd into a running sandbox, and stdin written while it runs, for real."""

from __future__ import annotations

import anyio
import pytest

from sandtree.engine import OperationEvent, OperationRecord

from .kit import TIERS, TIME_SCALE, Sandboxes, host_pids_in_cgroup, stdout, succeeded

pytestmark = [pytest.mark.isolation, pytest.mark.anyio]


async def _event(sb: Sandboxes, op: OperationRecord, kind: str, spid: int) -> OperationEvent:
    with anyio.fail_after(30 * TIME_SCALE):
        async for event in sb.engine.follow_events(op):
            if event.type == kind and event.spid == spid:
                return event
    raise AssertionError(f"no {kind} event for spid {spid}")


@pytest.mark.parametrize("tier", TIERS)
async def test_an_exec_runs_inside_the_sandbox_as_its_user_and_in_its_cgroups(
    sandboxes: Sandboxes, tier: str
) -> None:
    op = await sandboxes.engine.spawn(
        sandboxes.spec(
            "echo ready > /tmp/ready; cat", tier=tier, stdin=b"", stdin_close=False, timeout=60
        )
    )
    await _event(sandboxes, op, "spawn", 1)
    cgroups = "grep -E ':pids:|^0::' /proc/self/cgroup || true"
    spid = await sandboxes.engine.exec_process(
        op, command=f"cat /tmp/ready; id -u; {cgroups}", shell=True, uid=1000, gid=1000
    )
    await _event(sandboxes, op, "exit", spid)
    result = sandboxes.engine.process_result(op, spid)
    await sandboxes.engine.write_stdin(op, 1, b"bye\n", close=True)
    done = succeeded(await sandboxes.finish(op))

    lines = result["stdout"]["value"].splitlines()
    assert lines[0] == "ready"  # it sees the sandbox's filesystem
    assert lines[1] == "1000"
    if tier == "container":  # gVisor shows its own cgroups inside
        # The sandbox has a cgroup namespace rooted at its own cgroup: an exec in it reads "/"
        # (v1's pids line; v2's only line, 0::), one left in any other cgroup would read a
        # path ("/../..." or a host one).
        assert lines[2:], lines
        assert all(line.endswith(":/") for line in lines[2:]), lines[2:]
    assert result["state"]["exit_code"] == 0
    assert stdout(done) == "bye\n"


@pytest.mark.parametrize("tier", TIERS)
async def test_a_signalled_exec_ends_alone_and_the_run_goes_on(
    sandboxes: Sandboxes, tier: str
) -> None:
    op = await sandboxes.engine.spawn(
        sandboxes.spec("cat; echo main-done", tier=tier, stdin_close=False, timeout=60)
    )
    await _event(sandboxes, op, "spawn", 1)
    spid = await sandboxes.engine.exec_process(op, command="sleep 1000", shell=True)
    await _event(sandboxes, op, "spawn", spid)

    await sandboxes.engine.signal_process(op, spid, 15)
    exit = await _event(sandboxes, op, "exit", spid)
    await sandboxes.engine.write_stdin(op, 1, b"", close=True)
    done = succeeded(await sandboxes.finish(op))

    assert exit.data["signal"] == 15
    assert stdout(done) == "main-done\n"
    assert host_pids_in_cgroup(op) == []
