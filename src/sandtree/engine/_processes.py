"""Processes of running sandboxes: the main one (spid 1) and those exec'd into it (spid ≥ 2).

Each live run registers here while its sandbox runs. Exec'd processes stream their output
into the operation's event log under their own spid, take stdin writes (optionally keeping
the pipe open), can be signalled, and end with the sandbox at the latest.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sandtree.engine._events import EventLog
from sandtree.engine._streams import Collector, encode_stream
from sandtree.engine.runtime import (
    ProcessSpec,
    Runtime,
    Sandbox,
    SandboxExit,
    SandboxProcess,
    SandboxSpec,
)
from sandtree.engine.types import OperationEvent, OperationKind, OperationRecord
from sandtree.errors import ConflictError, NotFoundError, NotReadyError

__all__ = ["LiveRun", "ProcessTable", "exit_event", "process_result", "sandbox_pid"]

#: How long the end of a run waits for its exec'd processes' output to drain.
_DRAIN_SECONDS = 5.0


def sandbox_pid(host_pid: int) -> int:
    """The pid a process has in its sandbox's pid namespace: what events show a tenant.

    Host pids say how busy the host is and name host processes, so they are never shown.
    0 when the host cannot tell (a process not in a nested pid namespace, e.g. gVisor's
    ``runsc exec``, whose processes live in gVisor's own kernel).
    """
    try:
        with open(f"/proc/{host_pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return int(ids[-1]) if len(ids) > 1 else 0
    except (OSError, ValueError):
        pass
    return 0


@dataclasses.dataclass
class LiveRun:
    runtime: Runtime
    sandbox: Sandbox
    spec: SandboxSpec
    log: EventLog
    truncate: int
    processes: dict[int, Sandbox | SandboxProcess] = dataclasses.field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    next_spid: int = 2

    async def drain(self) -> None:
        """After the sandbox ended: let exec'd processes report their exits."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=_DRAIN_SECONDS)


class ProcessTable:
    """The live runs of this engine, by operation id.

    ``operation`` looks an operation up as it is now: a request for a run that is not live
    is told to retry (425) while the operation has not ended, since its sandbox is still
    coming up (or its end is being recorded), and refused (409) once it has.
    """

    def __init__(self, operation: Callable[[str], OperationRecord | None]) -> None:
        self._live: dict[str, LiveRun] = {}
        self._operation = operation

    def register(self, op_id: str, live: LiveRun) -> None:
        live.processes[1] = live.sandbox
        self._live[op_id] = live

    def unregister(self, op_id: str) -> None:
        self._live.pop(op_id, None)

    def _get(self, op_id: str) -> LiveRun:
        live = self._live.get(op_id)
        if live is not None:
            return live
        op = self._operation(op_id)
        if op is not None and op.kind is OperationKind.INSTANCE and not op.status.terminal:
            # Looked up after the miss: a run that registers in between reads as not ended,
            # so no running operation is ever answered 409.
            raise NotReadyError(
                f"operation {op_id} is {op.status} and its sandbox is not accepting processes"
                " yet; retry after the Retry-After delay"
            )
        ended = f"it ended {op.status}" if op is not None and op.status.terminal else "it has none"
        raise ConflictError(
            f"operation {op_id} has no running sandbox ({ended}); processes, stdin and signals"
            " reach a sandbox only while its instance operation runs: start a new run"
        )

    async def exec(
        self,
        op_id: str,
        *,
        args: Sequence[str],
        env: Mapping[str, str | None],
        cwd: str,
        uid: int,
        gid: int,
        stdin: bytes,
        stdin_close: bool,
        truncate: int | None,
    ) -> int:
        """Start a process in the operation's sandbox; returns its spid."""
        live = self._get(op_id)
        spid = live.next_spid
        live.next_spid += 1
        merged = dict(live.spec.env)
        for key, value in env.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        cwd = cwd or live.spec.cwd
        wanted = ProcessSpec(name=f"exec-{spid}", args=args, env=merged, cwd=cwd, uid=uid, gid=gid)
        process = await live.runtime.exec(live.spec, wanted)
        live.processes[spid] = process
        cap = truncate if truncate is not None else live.truncate
        pid = sandbox_pid(process.pid)
        live.log.emit("spawn", {"pid": pid, "command": args[0], "args": list(args[1:]),
                                "shell": False, "cwd": cwd, "uid": uid, "gid": gid,
                                "timeout": 0, "truncate_at": cap}, spid=spid)  # fmt: skip
        task = asyncio.get_running_loop().create_task(
            _supervise(process, live.log, spid, cap, stdin, stdin_close)
        )
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)
        return spid

    def _process(self, op_id: str, spid: int) -> Sandbox | SandboxProcess:
        process = self._get(op_id).processes.get(spid)
        if process is None:
            raise NotFoundError(f"operation {op_id} has no process {spid}")
        return process

    async def write_stdin(self, op_id: str, spid: int, data: bytes, *, close: bool) -> None:
        live = self._get(op_id)
        await self._process(op_id, spid).write_stdin(data, close=close)
        if data:
            value = base64.b64encode(data[: live.truncate]).decode("ascii")
            live.log.emit("stdin", {"value": value, "encoding": "base64", "truncated": False},
                          spid=spid)  # fmt: skip

    async def signal(self, op_id: str, spid: int, signum: int) -> None:
        if spid == 1:
            # The main process is the sandbox's init: ending it ends the run, like a failure.
            await self._get(op_id).sandbox.kill()
            return
        await self._process(op_id, spid).signal(signum)  # type: ignore[union-attr]


async def _supervise(
    process: SandboxProcess,
    log: EventLog,
    spid: int,
    cap: int,
    stdin: bytes,
    stdin_close: bool,
) -> None:
    out = Collector("stdout", cap, log, spid=spid)
    err = Collector("stderr", cap, log, spid=spid)
    pumps = [
        asyncio.create_task(out.pump(process.stdout())),
        asyncio.create_task(err.pump(process.stderr())),
        asyncio.create_task(process.write_stdin(stdin, close=stdin_close)),
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    exit = await process.wait()
    await asyncio.gather(*pumps, return_exceptions=True)
    out.finish()
    err.finish()
    log.emit(
        "exit",
        exit_event(process.pid, exit, timed_out=False, elapsed=loop.time() - started),
        spid=spid,
    )


def exit_event(pid: int, exit: SandboxExit, *, timed_out: bool, elapsed: float) -> dict[str, Any]:
    """The data of a process's ``exit`` event."""
    zero = dict.fromkeys(
        ("shared_memory", "unshared_memory", "swaps", "minor_faults", "major_faults",
         "voluntary_ctx_switches", "involuntary_ctx_switches", "block_input_ops",
         "block_output_ops", "ipc_msgs_sent", "ipc_msgs_received", "signals_received"), 0,
    )  # fmt: skip
    resources = {
        "user_time_us": int(exit.user_cpu_time * 1e6),
        "sys_time_us": int(exit.system_cpu_time * 1e6),
        "max_rss_kb": exit.max_rss_kb,
        **zero,
    }
    return {
        "pid": pid,
        "code": -1 if exit.signal else exit.exit_code,
        "signal": exit.signal or -1,
        "timed_out": timed_out,
        "duration_ms": int(elapsed * 1000),
        "resources": resources,
    }


def process_result(events: Sequence[OperationEvent], spid: int) -> dict[str, Any]:
    """An ``InstanceResult`` for one process, folded from its events (running or ended)."""
    mine = [e for e in events if e.spid == spid]
    spawn = next((e for e in mine if e.type == "spawn"), None)
    if spawn is None:
        raise NotFoundError(f"no process {spid} was started in this operation")
    streams: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    exit: Mapping[str, Any] | None = None
    for event in mine:
        if event.type in streams:
            raw = str(event.data["value"])
            chunk = base64.b64decode(raw) if event.data["encoding"] == "base64" else raw.encode()
            streams[event.type] += chunk
        elif event.type == "truncated":
            truncated[str(event.data["stream"])] = True
        elif event.type == "exit":
            exit = event.data

    def stream(name: str) -> dict[str, Any]:
        value, encoding = encode_stream(bytes(streams[name]))
        return {"value": value, "encoding": encoding, "truncated": truncated[name]}

    return {
        "state": {
            "exit_code": exit["code"] if exit else -1,
            "signal": exit["signal"] if exit else -1,
            "timed_out": bool(exit and exit["timed_out"]),
            "pid": spawn.data.get("pid", 0),
            "continued": False,
            "core_dump": False,
            "stopped": False,
        },
        "stdout": stream("stdout"),
        "stderr": stream("stderr"),
        "resources": {},
    }
