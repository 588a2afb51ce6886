"""Helpers for the real-runtime tests: engines, reading results, and host-side probes that
tell whether a sandbox left a process, a cgroup or a mount behind."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from sandtree.config import Settings
from sandtree.engine import (
    Engine,
    ImageRecord,
    OperationRecord,
    PlacedFile,
    RunSpec,
    default_runtimes,
)
from sandtree.engine.runtime import host_cgroups
from sandtree.engine.runtime._network import NetworkPool

MiB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The controllers whose limits sandtree sets; runsc also creates our path in the others.
LIMIT_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
#: Tiers for ``parametrize``; gVisor runs carry the ``gvisor`` mark so they can be deselected.
TIERS = ["container", pytest.param("gvisor", marks=pytest.mark.gvisor)]
#: How much slower than this host the machine running the tests is: the stock-host VM runs
#: under software emulation (tests/vm sets it). Windows a workload needs to reach a limit
#: are multiplied by it; it never shortens anything.
TIME_SCALE = max(1.0, float(os.environ.get("SANDTREE_TEST_TIME_SCALE", "1")))


def gvisor_xfail(reason: str) -> list[Any]:
    """Tiers where the gVisor case is a known, reported failure (strict: a fix shows up)."""
    return [
        "container",
        pytest.param("gvisor", marks=[pytest.mark.gvisor, pytest.mark.xfail(reason=reason)]),
    ]


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "memory_limit_bytes": 512 * MiB,
        "pids_limit": 256,
        "default_timeout": 10,
    }
    values.update(overrides)
    return Settings(data_dir=data_dir, **values)


def real_engine(data_dir: Path, *, network: NetworkPool | None = None, **overrides: Any) -> Engine:
    """An engine on crun/runsc with the default (SQLite) store under ``data_dir``."""
    settings = make_settings(data_dir, **overrides)
    return Engine(settings, runtimes=default_runtimes(settings), network=network)


class Sandboxes:
    """A started engine with the busybox image imported: spawn, wait, read the result."""

    def __init__(self, engine: Engine, busybox: ImageRecord) -> None:
        self.engine = engine
        self.busybox = busybox

    def spec(self, command: str, *, tier: str = "container", **fields: Any) -> RunSpec:
        fields.setdefault("image", "tag:busybox")
        fields.setdefault("shell", True)
        fields.setdefault("disposable", True)
        fields.setdefault("timeout", 10)
        return RunSpec(command=command, isolation=tier, **fields)

    async def run(self, command: str, *, tier: str = "container", **fields: Any) -> OperationRecord:
        """Spawn ``command`` (a shell command unless ``shell=False``) and wait for its end."""
        op = await self.engine.spawn(self.spec(command, tier=tier, **fields))
        return await self.finish(op)

    async def finish(self, op: OperationRecord, *, wait: float = 60) -> OperationRecord:
        done = await self.engine.wait_operation(op, timeout=wait)
        assert done.status.terminal, f"operation {op.uuid} still {done.status} after {wait} s"
        return done

    async def ok(self, command: str, *, tier: str = "container", **fields: Any) -> str:
        """Run; require SUCCESS and exit code 0; return stdout."""
        return stdout(succeeded(await self.run(command, tier=tier, **fields)))

    async def commit(self, command: str, *, tier: str = "container", **fields: Any) -> ImageRecord:
        """Run with ``disposable=False``; require success; return the child image."""
        op = succeeded(await self.run(command, tier=tier, disposable=False, **fields))
        assert op.result_image is not None, op
        return self.engine.resolve_image(op.result_image)

    async def place(self, data: bytes, path: str, **fields: Any) -> PlacedFile:
        """Upload ``data`` and describe it placed at ``path``."""

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        record = await self.engine.upload_file(chunks())
        return PlacedFile(uuid=record.uuid, path=path, **fields)

    async def healthy(self, tier: str = "container") -> None:
        """A trivial run right now succeeds: the engine survived whatever came before."""
        assert await self.ok("echo still-fine", tier=tier) == "still-fine\n"


SandboxesFactory = Callable[..., contextlib.AbstractAsyncContextManager[Sandboxes]]


# -- results -----------------------------------------------------------------------------------


def _stream(op: OperationRecord, name: str) -> str:
    assert op.result is not None, f"operation {op.uuid} has no result: {op.status} {op.error}"
    doc = op.result[name]
    if doc["encoding"] == "base64":
        return base64.b64decode(doc["value"]).decode("utf-8", "replace")
    return str(doc["value"])


def stdout(op: OperationRecord) -> str:
    return _stream(op, "stdout")


def stderr(op: OperationRecord) -> str:
    return _stream(op, "stderr")


def exit_code(op: OperationRecord) -> int:
    assert op.result is not None, f"operation {op.uuid} has no result: {op.status} {op.error}"
    return int(op.result["state"]["exit_code"])


def succeeded(op: OperationRecord) -> OperationRecord:
    """``op``, after checking it is SUCCESS with exit code 0 (with a useful message if not)."""
    assert op.status == "SUCCESS", (op.status, op.error, op.result and stderr(op))
    assert exit_code(op) == 0, (exit_code(op), stdout(op), stderr(op))
    return op


def shell_results(text: str) -> dict[str, str]:
    """``key=value`` lines a probe script printed (e.g. ``mount=1``)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value
    return out


# -- host probes -------------------------------------------------------------------------------


def sandbox_id(op: OperationRecord) -> str:
    return f"st-{op.uuid}"


def cgroup_dirs(op: OperationRecord, controllers: Iterable[str] | None = None) -> list[Path]:
    """The sandbox's cgroup directories that still exist (all mounted controllers by default;
    on cgroup v2 its one directory in the sandtree subtree, whatever ``controllers`` says)."""
    host = host_cgroups()
    if host.mode == "v2":
        assert host.subtree is not None
        return [path for path in [host.subtree / sandbox_id(op)] if path.exists()]
    names = (
        list(controllers)
        if controllers is not None
        else sorted(p.name for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())
    )
    return [
        path
        for name in names
        if (path := CGROUP_ROOT / name / "sandtree" / sandbox_id(op)).exists()
    ]


def _procs() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def host_pids_in_cgroup(op: OperationRecord) -> list[int]:
    """Host processes in the sandbox's cgroup (any controller), found via /proc/PID/cgroup."""
    # v1: /sandtree/<id>; v2: <subtree>/<id>[/sandbox] (the subtree may be a systemd unit's).
    marker = f"/{sandbox_id(op)}"
    found = []
    for pid in _procs():
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            paths = [line.split(":", 2)[-1] for line in lines]
            if any(f"{marker}/" in f"{p}/" for p in paths):
                found.append(pid)
    return found


def host_pids_with(needle: str) -> list[int]:
    """Host processes (not zombies) whose command line contains ``needle``."""
    found = []
    for pid in _procs():
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if needle.encode() in cmdline:
                found.append(pid)
    return found


def mounts_under(prefix: Path) -> list[str]:
    """Mount points of this process's mount namespace at or below ``prefix``."""
    top = str(prefix).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == top or point.startswith(top + "/"):
            points.append(point)
    return points


def unique_seconds() -> int:
    """A sleep duration no other process on the host is likely to use (to find ours)."""
    return 900_000 + secrets.randbelow(99_999)


def python() -> str:
    return sys.executable
