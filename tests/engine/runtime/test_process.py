"""AsyncProcess: a child started off the event loop, with asyncio pipes and a pidfd exit."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from sandtree.engine.runtime._process import AsyncProcess

pytestmark = pytest.mark.anyio


async def test_process_streams_stdout_and_stderr_and_reads_its_stdin() -> None:
    proc = await AsyncProcess.start(["sh", "-c", "echo out; echo err >&2; cat; exit 3"])
    proc.stdin.write(b"fed\n")
    await proc.stdin.drain()
    proc.stdin.close()
    with anyio.fail_after(10):
        out = await proc.stdout.read()
        err = await proc.stderr.read()
        rc = await proc.wait()
    assert (out, err, rc) == (b"out\nfed\n", b"err\n", 3)
    assert proc.returncode == 3


async def test_killed_process_reports_the_signal_as_a_negative_status() -> None:
    proc = await AsyncProcess.start(["sleep", "100"])
    proc.kill()
    with anyio.fail_after(10):
        assert await proc.wait() == -9


async def test_preexec_runs_in_the_child_before_exec(tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def write_own_pid() -> None:
        marker.write_text(str(os.getpid()), encoding="ascii")

    proc = await AsyncProcess.start(["true"], preexec_fn=write_own_pid)
    with anyio.fail_after(10):
        assert await proc.wait() == 0
    assert marker.read_text(encoding="ascii") == str(proc.pid)
