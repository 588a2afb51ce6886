"""A crash and a restart, for real: a server process is SIGKILLed while a sandbox runs; the next
engine on the same data directory fails the operation, stops the orphaned sandbox and removes
its cgroups, mounts and runtime state.

The crashed server is a child process (so it can really be killed). It shares this process's
mount namespace, so the overlay it mounted outlives it here, as it would on a host where the
server could not enter a private mount namespace: the restart must unmount it.
"""

from __future__ import annotations

import json
import selectors
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine import (
    Engine,
    OperationKind,
    OperationRecord,
    OperationStatus,
    default_runtimes,
)

from .kit import (
    LIMIT_CONTROLLERS,
    TIERS,
    Sandboxes,
    SandboxesFactory,
    cgroup_dirs,
    host_pids_in_cgroup,
    host_pids_with,
    make_settings,
    mounts_under,
    python,
    real_engine,
    sandbox_id,
    stdout,
    unique_seconds,
)

pytestmark = [pytest.mark.isolation, pytest.mark.anyio]

# Starts an engine, spawns a long run, waits until it is running (its `spawn` event and first
# output), reports, then blocks until it is killed. Nothing here closes the engine: the test
# kills this process instead.
_SERVER = r"""
import asyncio, json, sys
from pathlib import Path
from sandtree.config import Settings
from sandtree.engine import Engine, RunSpec, default_runtimes

async def main(data_dir, rootfs, tier, seconds):
    settings = Settings(data_dir=Path(data_dir), memory_limit_bytes=512 << 20, pids_limit=256)
    engine = Engine(settings, runtimes=default_runtimes(settings))
    await engine.start()
    await engine.import_local(Path(rootfs), tag="busybox")
    op = await engine.spawn(RunSpec(image="tag:busybox", command=f"echo started; sleep {seconds}",
                                    shell=True, isolation=tier, timeout=3000, disposable=False))
    async def started():  # the `spawn` event, then the command's own first output
        seen = []
        async for event in engine.follow_events(op):
            seen.append(event.type)
            if event.type == "stdout" and "spawn" in seen:
                return
    await asyncio.wait_for(started(), 60)
    status = engine.get_operation(op.uuid).status
    print(json.dumps({"op": op.uuid, "status": str(status),
                      "mounts": str(engine.layers.mounts_dir),
                      "runs": str(engine.layers.runs_dir)}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4])))
"""


@pytest.fixture
def crashed_server(
    tmp_path: Path, busybox_rootfs: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """``start(tier, seconds)`` runs the server script and returns its report (a dict)."""
    children: list[subprocess.Popen[str]] = []

    def start(tier: str, seconds: int) -> dict[str, Any]:
        child = subprocess.Popen(
            [
                python(),
                "-c",
                _SERVER,
                str(tmp_path / "data"),
                str(busybox_rootfs),
                tier,
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(child.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=60)
        line = child.stdout.readline() if ready else ""
        if not line:
            child.kill()
            _, err = child.communicate()
            raise AssertionError(f"the server did not report within 60 s: {err[-2000:]}")
        report: dict[str, Any] = json.loads(line)
        report["child"] = child
        return report

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate()


@pytest.mark.parametrize("tier", TIERS)
async def test_a_restart_fails_the_running_operation_and_removes_its_sandbox(
    tmp_path: Path, crashed_server: Any, tier: str
) -> None:
    seconds = unique_seconds()
    report = crashed_server(tier, seconds)
    assert report["status"] == "EXECUTING"
    op_id, mounts, runs = report["op"], Path(report["mounts"]), Path(report["runs"])
    state = tmp_path / "data" / "run" / ("crun" if tier == "container" else "runsc")
    probe = OperationRecord(
        uuid=op_id, kind=OperationKind.INSTANCE, status=OperationStatus.EXECUTING, created_at=""
    )

    # The sandbox is really running, with its cgroups, mount and runtime state.
    assert host_pids_in_cgroup(probe) != []
    assert cgroup_dirs(probe, LIMIT_CONTROLLERS) != []
    assert str(mounts / op_id) in mounts_under(mounts)
    assert any(p.name.startswith(sandbox_id(probe)) for p in state.iterdir())

    report["child"].kill()  # the crash: no close(), no cancel, no cleanup of any kind
    report["child"].wait()
    # The orphaned sandbox keeps running (its runtime has a session of its own).
    assert host_pids_in_cgroup(probe) != []
    if tier == "container":
        assert host_pids_with(f"sleep {seconds}") != []

    async with real_engine(tmp_path / "data") as engine:
        op = engine.get_operation(op_id)
        assert op.status == "FAILED"
        assert op.error is not None
        assert "restarted while the operation ran" in op.error
        events = [e async for e in engine.follow_events(op, follow=False)]
        assert events[-1].type == "completion"
        assert events[-1].data["status"] == "FAILED"
        # Nothing of the old sandbox is left: processes, cgroups, mount, run dir, runtime state.
        assert host_pids_in_cgroup(op) == []
        assert host_pids_with(f"sleep {seconds}") == []
        assert host_pids_with(sandbox_id(op)) == []
        assert cgroup_dirs(op, LIMIT_CONTROLLERS) == []
        assert mounts_under(mounts) == []
        assert not (runs / op_id).exists()
        assert [p.name for p in state.iterdir() if sandbox_id(op) in p.name] == []
        # The image the crashed server imported survived, and the engine runs sandboxes.
        await Sandboxes(engine, engine.resolve_image("tag:busybox")).healthy(tier)


@pytest.mark.parametrize("tier", TIERS)
async def test_starting_a_second_engine_leaves_the_first_engine_s_sandboxes_running(
    make_sandboxes: SandboxesFactory, tmp_path: Path, tier: str
) -> None:
    async with make_sandboxes() as sb:
        op = await sb.engine.spawn(sb.spec("echo started; sleep 3; echo finished", tier=tier))
        async for event in sb.engine.follow_events(op):
            if event.type == "stdout":
                break
        async with real_engine(tmp_path / "another-data-dir"):
            pass
        done = await sb.finish(op)
        assert done.status == "SUCCESS"
        assert done.result is not None
        assert done.result["state"]["signal"] == 0
        assert stdout(done) == "started\nfinished\n"


async def test_a_closed_engine_leaves_nothing_under_run_sandtree(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
        mounts = engine.layers.mounts_dir
        assert mounts.is_dir()
    assert not mounts.exists()
