"""What a sandbox runtime is to the engine: start a process tree from a prepared root
filesystem, stream its output, stop it, and report how it ended and what it used."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

__all__ = [
    "Limits",
    "ProcessSpec",
    "Runtime",
    "Sandbox",
    "SandboxExit",
    "SandboxProcess",
    "SandboxSpec",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-sandbox resource limits, enforced by the runtime (cgroups)."""

    memory_bytes: int
    pids: int
    cpus: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxSpec:
    """Everything a runtime needs to start one sandbox."""

    id: str
    #: The mounted root filesystem (an overlay of the image layers with a writable upper).
    rootfs: Path
    #: A private directory the runtime may use for its bundle and state.
    workdir: Path
    args: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    uid: int
    gid: int
    hostname: str
    limits: Limits
    #: Path of a prepared network namespace to join, or None for no network at all.
    netns: str | None = None
    #: Nameservers to write to the sandbox's /etc/resolv.conf (only with a network).
    nameservers: Sequence[str] = ()
    #: A read-only sysfs mounted for ``netns`` (its /sys/class/net), bound at /sys.
    sysfs: str | None = None
    #: Largest file any process may write (RLIMIT_FSIZE), or None for no cap.
    max_file_bytes: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """A process to exec into a running sandbox (its capabilities and caps are the sandbox's)."""

    #: Unique within the sandbox; names the runtime's files for this process.
    name: str
    args: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    uid: int
    gid: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxExit:
    """How a sandbox ended and what it used."""

    exit_code: int
    #: The signal that killed the main process, or 0.
    signal: int = 0
    #: Which enforced limit ended the run, if any: ``memory`` or ``pids``.
    limit_hit: str | None = None
    user_cpu_time: float = 0.0
    system_cpu_time: float = 0.0
    max_rss_kb: int = 0
    #: Runtime diagnostics (the runtime's own stderr) when it failed before the process ran.
    runtime_error: str | None = None


class Sandbox(Protocol):
    """A started sandbox. ``stdout``/``stderr`` yield chunks until the process tree exits."""

    @property
    def pid(self) -> int: ...

    def stdout(self) -> AsyncIterator[bytes]: ...

    def stderr(self) -> AsyncIterator[bytes]: ...

    async def write_stdin(self, data: bytes, *, close: bool) -> None: ...

    async def kill(self) -> None:
        """Kill every process of the sandbox (idempotent)."""

    async def wait(self) -> SandboxExit:
        """Wait for the sandbox to end, then release its runtime resources."""


class SandboxProcess(Protocol):
    """A process exec'd into a running sandbox."""

    @property
    def pid(self) -> int: ...

    def stdout(self) -> AsyncIterator[bytes]: ...

    def stderr(self) -> AsyncIterator[bytes]: ...

    async def write_stdin(self, data: bytes, *, close: bool) -> None: ...

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""

    async def wait(self) -> SandboxExit: ...


class Runtime(Protocol):
    """A way to run sandboxes: ``crun``/``runc`` containers, gVisor, or a fake for tests."""

    @property
    def name(self) -> str: ...

    @property
    def supports_network(self) -> bool:
        """Whether sandboxes can join a prepared network namespace."""

    async def start(self, spec: SandboxSpec) -> Sandbox: ...

    async def exec(self, spec: SandboxSpec, process: ProcessSpec) -> SandboxProcess:
        """Start ``process`` in the running sandbox ``spec``."""

    def cleanup_stale(self) -> None:
        """Remove sandboxes, cgroups and state left behind by a previous process."""
