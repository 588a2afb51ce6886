"""Runs on the fake runtime: how they end (exit codes, the limits they can hit, timeouts,
and sandboxes that cannot start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runkit import stdout

from sandtree.engine import Engine, ImageRecord, OperationStatus
from sandtree.engine.runtime import FakeRuntime
from sandtree.engine.runtime._base import SandboxExit, SandboxSpec
from sandtree.engine.runtime._fake import FakeSandbox
from sandtree.testing import make_engine, read_file, run_command

pytestmark = pytest.mark.anyio


# -- how runs end ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
async def test_exit_code_is_reported_and_the_operation_succeeds(
    engine: Engine, base: ImageRecord, code: int
) -> None:
    op = await run_command(engine, f"echo before; exit {code}; echo after", base)

    assert op.status == OperationStatus.SUCCESS
    assert op.error is None
    assert op.result is not None
    assert op.result["state"]["exit_code"] == code
    assert op.result["state"]["timed_out"] is False
    assert stdout(op) == "before\n"


async def test_unknown_command_exits_127(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "frobnicate", base)

    assert op.result is not None
    assert op.result["state"]["exit_code"] == 127
    assert "frobnicate" in op.result["stderr"]["value"]


async def test_out_of_memory_fails_naming_the_memory_limit(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "write /tmp/partial x; oom", base)

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "memory" in op.error
    assert str(engine.settings.memory_limit_bytes) in op.error
    assert op.result is not None
    assert op.result["limit_hit"] == "memory"
    assert op.result_image is None
    assert engine.lineage(base).children == []


async def test_fork_bomb_fails_naming_the_process_limit(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "forkbomb", base)

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "process limit" in op.error
    assert str(engine.settings.pids_limit) in op.error
    assert op.result is not None
    assert op.result["limit_hit"] == "pids"


async def test_run_past_its_timeout_completes_with_timed_out_and_its_output(
    engine: Engine, base: ImageRecord
) -> None:
    # FAILED is for the machinery; a command that overran its timeout is the command's
    # outcome, which the caller (an agent) must be told as a result.
    op = await run_command(engine, "echo started; block", base, timeout=1, disposable=True)

    assert op.status == OperationStatus.SUCCESS
    assert op.error is None
    assert op.result is not None
    assert op.result["state"]["timed_out"] is True
    assert op.result["state"]["signal"] == 9
    assert op.result["stdout"]["value"] == "started\n"
    assert op.result_image is None
    events = [e async for e in engine.follow_events(op, follow=False)]
    shutdown = next(e for e in events if e.type == "shutdown")
    assert shutdown.data["reason"] == "timeout"
    exit = next(e for e in events if e.type == "exit").data
    assert (exit["timed_out"], exit["signal"], exit["code"]) == (True, 9, -1)
    assert events[-1].type == "completion"
    assert events[-1].data["status"] == "SUCCESS"


async def test_a_kept_run_past_its_timeout_keeps_what_it_wrote_as_its_result_image(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(
        engine, "write /root/partial half; block", base, timeout=1, disposable=False
    )

    assert op.status == OperationStatus.SUCCESS
    assert op.result is not None
    assert op.result["state"]["timed_out"] is True
    assert op.result["filesystem_changed"] is True
    assert op.result_image is not None
    assert op.result_image != base.uuid
    kept = engine.resolve_image(op.result_image)
    assert read_file(engine, kept, "/root/partial") == b"half"
    assert [child.uuid for child in engine.lineage(base).children] == [kept.uuid]


async def test_timeout_is_reported_as_the_limit_hit(engine: Engine, base: ImageRecord) -> None:
    # RunResult.limit_hit documents "timeout" as one of its values.
    op = await run_command(engine, "block", base, timeout=1)

    assert op.result is not None
    assert op.result["limit_hit"] == "timeout"


@pytest.mark.parametrize("code", [0, 1])
async def test_writing_past_max_layer_bytes_fails_naming_the_limit(
    engine: Engine, base: ImageRecord, code: int
) -> None:
    op = await run_command(
        engine, f"write /big 0123456789abcdef; exit {code}", base, max_layer_bytes=8
    )

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "max_layer_bytes=8" in op.error
    assert op.result_image is None


class _ExecFailureSandbox(FakeSandbox):
    async def _run(self) -> SandboxExit:
        return SandboxExit(exit_code=1, runtime_error="exec: /bin/nope: no such file")


class _BrokenRuntime(FakeRuntime):
    """Fails every run: ``start`` raises for ``explode``, else the command cannot exec."""

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        if spec.args[-1] == "explode":
            raise OSError("runtime binary vanished")
        self.started.append(spec)
        return _ExecFailureSandbox(spec, 4242)


@pytest.mark.parametrize(
    ("command", "message"),
    [("explode", "runtime binary vanished"), ("anything", "could not start the command")],
)
async def test_run_whose_sandbox_cannot_start_fails_and_leaves_nothing_behind(
    tmp_path: Path, rootfs: Path, command: str, message: str
) -> None:
    async with make_engine(tmp_path / "data", runtime=_BrokenRuntime()) as engine:
        base = await engine.import_local(rootfs)
        op = await run_command(engine, command, base)
        events = [e async for e in engine.follow_events(op, follow=False)]
        runs_left = list(engine.layers.runs_dir.iterdir())
        children = engine.lineage(base).children

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert message in op.error
    assert op.result_image is None
    assert events[-1].type == "completion"
    assert events[-1].data["status"] == "FAILED"
    assert children == []
    if command == "explode":  # the failed start is cleaned up before the op ends
        assert runs_left == []
