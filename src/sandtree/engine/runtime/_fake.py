"""A deterministic in-process runtime for fast tests of the engine around the sandbox.

It does not isolate anything: it interprets a few commands against the prepared root
filesystem (a real overlay mount, so commits behave as they do for real). The command is the
last element of ``args`` (so ``sh -c CMD`` works); statements are separated by ``;``:

* ``echo TEXT`` / ``echoerr TEXT`` — a line to stdout / stderr
* ``cat`` — copy stdin to stdout
* ``write PATH TEXT`` — write a file (parents created); ``rm PATH`` — remove a file or tree
* ``exit N`` — end with status N; ``block`` — wait until killed (for timeout/cancel tests)
* ``env`` — print the environment; ``pwd`` — print the working directory
* ``oom`` / ``forkbomb`` — end as if the memory / pids limit was hit
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from sandtree.engine.runtime._base import ProcessSpec, SandboxExit, SandboxSpec

__all__ = ["FakeRuntime", "FakeSandbox"]

_EOF = b""


class FakeSandbox:
    def __init__(self, spec: SandboxSpec, pid: int, *, uid_shift: int = 100000) -> None:
        self._spec = spec
        self._uid_shift = uid_shift
        self._pid = pid
        self._stdout: asyncio.Queue[bytes] = asyncio.Queue()
        self._stderr: asyncio.Queue[bytes] = asyncio.Queue()
        self._stdin = bytearray()
        self._stdin_closed = asyncio.Event()
        self._killed = asyncio.Event()
        self._signal = 9
        self._task = asyncio.create_task(self._run())

    @property
    def pid(self) -> int:
        return self._pid

    async def _drain(self, queue: asyncio.Queue[bytes]) -> AsyncIterator[bytes]:
        while (chunk := await queue.get()) != _EOF:
            yield chunk

    def stdout(self) -> AsyncIterator[bytes]:
        return self._drain(self._stdout)

    def stderr(self) -> AsyncIterator[bytes]:
        return self._drain(self._stderr)

    async def write_stdin(self, data: bytes, *, close: bool) -> None:
        self._stdin += data
        if close:
            self._stdin_closed.set()

    async def kill(self) -> None:
        self._killed.set()

    async def signal(self, signum: int) -> None:
        self._signal = signum
        self._killed.set()

    async def wait(self) -> SandboxExit:
        try:
            return await self._task
        finally:
            self._stdout.put_nowait(_EOF)
            self._stderr.put_nowait(_EOF)

    def _path(self, path: str) -> Path:
        return self._spec.rootfs / path.lstrip("/")

    async def _run(self) -> SandboxExit:
        command = self._spec.args[-1] if self._spec.args else ""
        for statement in (s.strip() for s in command.split(";")):
            verb, _, rest = statement.partition(" ")
            if verb == "echo":
                self._stdout.put_nowait(rest.encode() + b"\n")
            elif verb == "echoerr":
                self._stderr.put_nowait(rest.encode() + b"\n")
            elif verb == "cat":
                # A kill ends a cat still waiting for its input, as it ends a real one.
                events = (self._stdin_closed, self._killed)
                waits = [asyncio.ensure_future(event.wait()) for event in events]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for pending in waits:
                    pending.cancel()
                if not self._stdin_closed.is_set():
                    return SandboxExit(exit_code=128 + self._signal, signal=self._signal)
                self._stdout.put_nowait(bytes(self._stdin))
            elif verb == "write":
                target, _, text = rest.partition(" ")
                self._path(target).parent.mkdir(parents=True, exist_ok=True)
                self._path(target).write_text(text, encoding="utf-8")
                # As in a real sandbox, the file belongs to the run's user as the host sees it.
                owner = (self._uid_shift + self._spec.uid, self._uid_shift + self._spec.gid)
                os.chown(self._path(target), *owner)
            elif verb == "rm":
                victim = self._path(rest)
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                else:
                    victim.unlink()
            elif verb == "env":
                for key, value in self._spec.env.items():
                    self._stdout.put_nowait(f"{key}={value}\n".encode())
            elif verb == "pwd":
                self._stdout.put_nowait(f"{self._spec.cwd}\n".encode())
            elif verb == "exit":
                return SandboxExit(exit_code=int(rest or 0))
            elif verb == "block":
                await self._killed.wait()
                return SandboxExit(exit_code=128 + self._signal, signal=self._signal)
            elif verb == "oom":
                return SandboxExit(exit_code=137, signal=9, limit_hit="memory")
            elif verb == "forkbomb":
                return SandboxExit(exit_code=1, limit_hit="pids")
            elif verb:
                self._stderr.put_nowait(f"fake runtime: {verb}: command not found\n".encode())
                return SandboxExit(exit_code=127)
        return SandboxExit(exit_code=0)


class FakeRuntime:
    """``Runtime`` whose sandboxes run the fake command language above."""

    def __init__(self, *, uid_shift: int = 100000) -> None:
        self.started: list[SandboxSpec] = []
        #: While not ``None``, ``start`` waits for it before the sandbox exists (and sets
        #: ``at_gate`` when a start is held there): a test holds runs in their start to see
        #: what clients are told meanwhile.
        self.start_gate: asyncio.Event | None = None
        self.at_gate = asyncio.Event()
        self._uid_shift = uid_shift
        self._next_pid = 1000

    @property
    def name(self) -> str:
        return "fake"

    @property
    def supports_network(self) -> bool:
        return True

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        if self.start_gate is not None:
            self.at_gate.set()
            await self.start_gate.wait()
        self.started.append(spec)
        self._next_pid += 1
        return FakeSandbox(spec, self._next_pid, uid_shift=self._uid_shift)

    async def exec(self, spec: SandboxSpec, process: ProcessSpec) -> FakeSandbox:
        self._next_pid += 1
        child = dataclasses.replace(spec, args=tuple(process.args), env=dict(process.env),
                                    cwd=process.cwd, uid=process.uid, gid=process.gid)  # fmt: skip
        return FakeSandbox(child, self._next_pid, uid_shift=self._uid_shift)

    def cleanup_stale(self) -> None:
        return None
