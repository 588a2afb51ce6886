"""A child process driven from asyncio without blocking the event loop to start it.

``asyncio.create_subprocess_exec`` forks and waits for the exec in the loop's thread. With a
``preexec_fn`` that joins cgroups, that wait is 8-20 ms on cgroup-v1 hosts (the first write to
a memory cgroup's ``cgroup.procs`` waits for an RCU grace period), during which no other
sandbox's output is read. Here the fork+exec runs in a worker thread, the pipes are attached
to the loop, and the exit is noticed through a pidfd instead of a watcher thread per child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence

__all__ = ["AsyncProcess"]


class AsyncProcess:
    """A started child with asyncio streams for its stdio."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self._popen = popen
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._exited = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    @classmethod
    async def start(
        cls, argv: Sequence[str], *, preexec_fn: Callable[[], None] | None = None
    ) -> AsyncProcess:
        """Fork and exec ``argv`` in a worker thread (in a new session), then attach it."""
        popen = await asyncio.to_thread(
            subprocess.Popen,
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        try:
            return await cls._attach(popen)
        except BaseException:
            popen.kill()
            popen.wait()
            raise

    @classmethod
    async def _attach(cls, popen: subprocess.Popen[bytes]) -> AsyncProcess:
        assert popen.stdin is not None
        assert popen.stdout is not None
        assert popen.stderr is not None
        loop = asyncio.get_running_loop()
        readers = []
        for pipe in (popen.stdout, popen.stderr):
            reader = asyncio.StreamReader(limit=2**20)
            await loop.connect_read_pipe(_returning(asyncio.StreamReaderProtocol(reader)), pipe)
            readers.append(reader)
        transport, flow = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, popen.stdin
        )
        writer = asyncio.StreamWriter(transport, flow, None, loop)
        return cls(popen, writer, readers[0], readers[1])

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        # The pidfd is readable once the child has exited: this wait does not block.
        rc = self._popen.wait()
        if not self._exited.done():
            self._exited.set_result(rc)

    async def wait(self) -> int:
        """The exit status, ``-N`` for a death by signal N (as ``subprocess`` reports it)."""
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, signal.SIGKILL)


def _returning(
    protocol: asyncio.StreamReaderProtocol,
) -> Callable[[], asyncio.StreamReaderProtocol]:
    return lambda: protocol
