"""One run, start to finish: mount the image, place files, start the sandbox, stream its
output into the event log, enforce the wall-time and writable-layer limits, then commit the
upper dir as a child image or throw it away."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sandtree.config import Settings
from sandtree.engine._clock import now_iso
from sandtree.engine._events import EventLog
from sandtree.engine._files import BlobStore
from sandtree.engine._processes import LiveRun, ProcessTable, exit_event
from sandtree.engine._streams import Collector
from sandtree.engine.layers._ids import sandbox_owner
from sandtree.engine.layers._paths import make_parents_in_root, open_root, write_file_in_root
from sandtree.engine.layers._store import LayerStore, RunDirs
from sandtree.engine.layers._usage import LayerUsage
from sandtree.engine.runtime import Limits, Runtime, Sandbox, SandboxExit, SandboxSpec
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import (
    ImageRecord,
    ProcessState,
    ResourceUsage,
    RunResult,
    RunSpec,
)
from sandtree.errors import FileNotFoundInStoreError, InvalidRequestError

__all__ = ["DEFAULT_PATH", "RunExecutor", "RunFailure"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SECRET_SUFFIXES = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "CREDENTIALS", "AUTHORIZATION")
_DISK_POLL = 0.25


class RunFailure(Exception):
    """The run ended without a usable result (limit hit, timeout, cancel, spawn failure).

    Not a ``SandtreeError``: it never reaches a caller as such, it becomes a FAILED (or
    CANCELLED) operation whose error is ``message``.
    """

    def __init__(self, message: str, result: RunResult | None, *, cancelled: bool = False):
        super().__init__(message)
        self.message = message
        self.result = result
        self.cancelled = cancelled


def _masked(env: Mapping[str, str], asked: Mapping[str, str | None]) -> dict[str, str]:
    """The environment as the ``spawn`` event shows it: every value the request set is
    masked (a name tells nothing reliable about a secret), and so is any secret-looking one
    of the image's config; the image's other defaults are shown as they are."""
    return {
        k: "<MASKED>" if k in asked or k.upper().endswith(_SECRET_SUFFIXES) else v
        for k, v in env.items()
    }


@dataclasses.dataclass
class _Outcome:
    exit: SandboxExit
    timed_out: bool = False
    cancelled: bool = False
    disk_exceeded: LayerUsage | None = None


class RunExecutor:
    """Runs ``RunSpec``s. Holds no per-run state; the operations worker calls ``execute``."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: MetadataStore,
        layers: LayerStore,
        blobs: BlobStore,
        runtimes: Mapping[str, Callable[[], Runtime]],
        network: Any | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._layers = layers
        self._blobs = blobs
        self._runtime_factories = runtimes
        self._runtimes: dict[str, Runtime] = {}
        self._network = network
        #: The processes of running sandboxes, for exec, stdin writes and signals.
        self.processes = ProcessTable(store.get_operation)
        # Clean-up that finishes after a run has replied (veth teardown, deleting run dirs).
        self._cleanups: set[asyncio.Future[None]] = set()

    def _after_reply(self, cleanup: Callable[[Any], None], arg: Any) -> None:
        future = asyncio.get_running_loop().run_in_executor(None, cleanup, arg)
        self._cleanups.add(future)
        future.add_done_callback(self._cleanups.discard)

    async def settle(self) -> None:
        """Wait for the clean-up of finished runs (network namespaces, run directories)."""
        while self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    def runtime(self, tier: str) -> Runtime:
        if tier not in self._runtimes:
            factory = self._runtime_factories.get(tier)
            if factory is None:
                raise InvalidRequestError(
                    f"unknown isolation tier {tier!r}; use one of "
                    f"{', '.join(sorted(self._runtime_factories))}"
                )
            self._runtimes[tier] = factory()
        return self._runtimes[tier]

    def environment(self, image: ImageRecord, spec: RunSpec) -> dict[str, str]:
        env: dict[str, str] = {"PATH": DEFAULT_PATH}
        if spec.shell:
            env.update(image.env_map)
        for key, value in spec.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    async def execute(
        self,
        op_id: str,
        image: ImageRecord,
        spec: RunSpec,
        log: EventLog,
        cancel: asyncio.Event,
        *,
        namespace: str,
    ) -> tuple[RunResult, ImageRecord | None]:
        """Run ``spec`` on ``image``; returns the result and the new image, if one was made.

        Raises:
            RunFailure: a limit or a cancel ended the run, or it could not start. A run past
                its timeout is killed and completes: its result says `state.timed_out`.
        """
        tier = spec.isolation or self._settings.default_isolation
        runtime = self.runtime(tier)
        started = time.monotonic()
        # Mounting a deep stack takes milliseconds and placing files copies them: keep both
        # off the event loop, where other runs' output is being pumped.
        stack = (*image.layers, *spec.lower_layers)
        dirs = await asyncio.to_thread(self._layers.prepare_run, op_id, stack)
        lease = None
        try:
            env = self.environment(image, spec)
            cwd = spec.cwd or image.cwd or "/"
            if spec.files or cwd != "/":
                await asyncio.to_thread(self._prepare_rootfs, dirs, spec, cwd)
            if spec.network and self._network is not None:
                lease = await asyncio.to_thread(self._network.lease)
            args = ["/bin/sh", "-c", spec.command] if spec.shell else [spec.command, *spec.args]
            sandbox_spec = SandboxSpec(
                id=f"st-{op_id}",
                rootfs=dirs.merged,
                workdir=dirs.bundle,
                args=args,
                env=env,
                cwd=cwd,
                uid=spec.uid,
                gid=spec.gid,
                hostname=spec.hostname,
                limits=Limits(
                    memory_bytes=self._settings.memory_limit_bytes,
                    pids=self._settings.pids_limit,
                    cpus=self._settings.cpu_limit,
                ),
                netns=lease.netns_path if lease is not None else None,
                nameservers=lease.nameservers if lease is not None else (),
                sysfs=lease.sysfs if lease is not None else None,
                max_file_bytes=spec.max_layer_bytes or self._settings.max_layer_bytes,
            )
            log.emit(
                "init",
                {
                    "started_at": now_iso(),
                    # The rootfs as the sandbox sees it: its host path is not a tenant's to know.
                    "runtime_path": "/",
                    "verbose": False,
                    "init_pid": 1,
                    "hostname": spec.hostname,
                    "kernel": f"{platform.release()} {platform.version()}",
                    "machine": platform.machine(),
                    "boot_id": op_id,
                    "isolation": tier,
                },
            )
            sandbox = await runtime.start(sandbox_spec)
            log.emit(
                "spawn",
                {
                    "pid": 1,  # the command is the sandbox's init; its host pid is not shown
                    "command": args[0],
                    "args": args[1:],
                    "shell": spec.shell,
                    "cwd": cwd,
                    "uid": spec.uid,
                    "gid": spec.gid,
                    "timeout": spec.timeout,
                    "truncate_at": spec.truncate_output_at,
                    "env": _masked(env, spec.env),
                },
                spid=1,
            )
            if lease is not None:
                log.emit(
                    "network",
                    {
                        "interfaces": lease.counters(),
                        "configured": {"ip4": lease.address, "ip4_gw": lease.gateway},
                    },
                )
            out = Collector("stdout", spec.truncate_output_at, log)
            err = Collector("stderr", spec.truncate_output_at, log)
            live = LiveRun(runtime=runtime, sandbox=sandbox, spec=sandbox_spec, log=log,
                           truncate=spec.truncate_output_at)  # fmt: skip
            self.processes.register(op_id, live)
            try:
                outcome = await self._supervise(sandbox, spec, dirs, out, err, cancel)
            finally:
                self.processes.unregister(op_id)
            await live.drain()
        except BaseException:
            await asyncio.to_thread(self._layers.discard_run, dirs)
            raise
        finally:
            if lease is not None and self._network is not None:
                # Tearing a veth down takes ~30 ms of kernel work; nobody needs to wait for it.
                self._after_reply(self._network.release, lease)
        try:
            return await self._finish(
                op_id,
                image,
                spec,
                dirs,
                outcome,
                out,
                err,
                env,
                cwd,
                log,
                time.monotonic() - started,
                namespace,
            )
        finally:
            self._after_reply(self._layers.discard_run, dirs)

    def _prepare_rootfs(self, dirs: RunDirs, spec: RunSpec, cwd: str) -> None:
        shift = self._settings.uid_shift
        for placed in spec.files:
            record = self._store.get_file(placed.uuid)
            if record is None:
                raise FileNotFoundInStoreError(
                    f"file {placed.uuid} (for {placed.path}) was not uploaded; upload it with "
                    "POST /v1/files first and pass the uuid it returns"
                )
            uid, gid = sandbox_owner(
                placed.uid, placed.gid, uid_shift=shift, field=f"files[{placed.path!r}]"
            )
            with open(self._blobs.path(record.sha256), "rb") as src:
                write_file_in_root(
                    dirs.merged, placed.path, src, mode=placed.mode, uid=uid, gid=gid
                )
        if cwd != "/":
            uid, gid = sandbox_owner(spec.uid, spec.gid, uid_shift=shift, field="")
            rootfd = open_root(dirs.merged)
            try:
                parent = make_parents_in_root(rootfd, cwd.rstrip("/") + "/x", uid=uid, gid=gid)
                os.close(parent)
            finally:
                os.close(rootfd)

    async def _supervise(
        self,
        sandbox: Sandbox,
        spec: RunSpec,
        dirs: RunDirs,
        out: Collector,
        err: Collector,
        cancel: asyncio.Event,
    ) -> _Outcome:
        pumps = [
            asyncio.create_task(out.pump(sandbox.stdout())),
            asyncio.create_task(err.pump(sandbox.stderr())),
            asyncio.create_task(sandbox.write_stdin(spec.stdin, close=spec.stdin_close)),
        ]
        waiter = asyncio.create_task(sandbox.wait())
        canceller = asyncio.create_task(cancel.wait())
        max_layer = spec.max_layer_bytes or self._settings.max_layer_bytes
        disk = asyncio.create_task(self._watch_disk(dirs, max_layer))
        outcome = _Outcome(exit=SandboxExit(exit_code=-1))
        try:
            done, _ = await asyncio.wait(
                {waiter, canceller, disk},
                timeout=spec.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiter not in done:
                outcome.timed_out = not done
                outcome.cancelled = canceller in done
                if disk in done:
                    outcome.disk_exceeded = disk.result()
                await sandbox.kill()
            outcome.exit = await waiter
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for task in (canceller, disk, waiter, *pumps):
                task.cancel()
        if outcome.disk_exceeded is None:
            # A run can write past the cap and exit (even with 0) before our next look.
            usage = await asyncio.to_thread(self._layers.upper_usage, dirs)
            if usage.over(max_layer, self._settings.max_layer_entries):
                outcome.disk_exceeded = usage
        return outcome

    async def _watch_disk(self, dirs: RunDirs, limit: int) -> LayerUsage:
        while True:
            await asyncio.sleep(_DISK_POLL)  # periodic usage check, not a wait for state
            usage = await asyncio.to_thread(self._layers.upper_usage, dirs)
            if usage.over(limit, self._settings.max_layer_entries):
                return usage

    async def _finish(
        self,
        op_id: str,
        image: ImageRecord,
        spec: RunSpec,
        dirs: RunDirs,
        outcome: _Outcome,
        out: Collector,
        err: Collector,
        env: dict[str, str],
        cwd: str,
        log: EventLog,
        elapsed: float,
        namespace: str,
    ) -> tuple[RunResult, ImageRecord | None]:
        exit = outcome.exit
        stdout, stderr = out.finish(), err.finish()
        log.emit("exit", exit_event(1, exit, timed_out=outcome.timed_out, elapsed=elapsed), spid=1)
        reason = (
            "timeout" if outcome.timed_out else ("signal" if outcome.cancelled else "job_complete")
        )
        log.emit("shutdown", {"stopped_at": now_iso(), "reason": reason})
        resources = ResourceUsage(
            user_cpu_time=exit.user_cpu_time,
            system_cpu_time=exit.system_cpu_time,
            max_rss_kb=exit.max_rss_kb,
            elapsed_time=elapsed,
        )
        state = ProcessState(
            exit_code=exit.exit_code, signal=exit.signal, timed_out=outcome.timed_out, pid=1
        )
        result = RunResult(
            state=state,
            stdout=stdout,
            stderr=stderr,
            resources=resources,
            result_image=None,
            filesystem_changed=False,
            limit_hit="timeout"
            if outcome.timed_out
            else "disk"
            if outcome.disk_exceeded is not None
            else exit.limit_hit,
        )
        failure = self._failure(spec, outcome, exit)
        if failure is not None:
            message, cancelled = failure
            raise RunFailure(message, result, cancelled=cancelled)
        committed = await asyncio.to_thread(self._settle_upper, dirs, keep=not spec.disposable)
        if spec.disposable:
            return result, None
        upper_changed = committed is not None
        # Files a directory state placed change the filesystem as files placed one by one do.
        changed = upper_changed or bool(spec.lower_layers)
        new_env = self._preserved_env(image, spec) if spec.preserve_env else image.env
        new_cwd = cwd if spec.preserve_cwd else image.cwd
        if not changed and new_env == image.env and new_cwd == image.cwd:
            return dataclasses.replace(result, result_image=image.uuid), None
        new_layers: tuple[str, ...] = spec.lower_layers
        size = 0
        layer_sizes: dict[str, int] = {}
        if committed is not None:
            layer_id, size = committed
            new_layers, layer_sizes = (*new_layers, layer_id), {layer_id: size}
        # The parent's stack as it is now, read with no await before the image is added: a
        # compaction may have landed while this run ran (the new layer sits as well on the
        # compacted stack as on the one we mounted), and one landing later will rebase us.
        fresh = self._store.get_image(image.uuid)
        layers = (*(fresh.layers if fresh is not None else image.layers), *new_layers)
        child = ImageRecord(
            uuid=str(uuid.uuid4()),
            created_at=now_iso(),
            namespace=namespace,
            parent=image.uuid,
            operation=op_id,
            command=_describe(spec),
            depth=image.depth + 1,
            layers=layers,
            env=new_env,
            cwd=new_cwd,
            user=image.user,
            size=size,
        )
        self._store.add_image(child, layer_sizes=layer_sizes)
        return dataclasses.replace(
            result, result_image=child.uuid, filesystem_changed=changed, image_size=size
        ), child

    def _settle_upper(self, dirs: RunDirs, *, keep: bool) -> tuple[str, int] | None:
        """Unmount a finished run and, when ``keep``, turn a changed upper dir into a layer;
        returns ``(layer_id, bytes)`` if one was made. One thread hop for all three steps."""
        self._layers.release_run(dirs)
        if not keep or not self._layers.has_changes(dirs):
            return None
        return self._layers.commit_run(dirs)

    def _failure(
        self, spec: RunSpec, outcome: _Outcome, exit: SandboxExit
    ) -> tuple[str, bool] | None:
        if outcome.cancelled:
            return "the operation was cancelled; its sandbox was stopped", True
        if outcome.disk_exceeded is not None:
            cap = spec.max_layer_bytes or self._settings.max_layer_bytes
            used = outcome.disk_exceeded
            if used.entries > self._settings.max_layer_entries:
                return (
                    f"the run made {used.entries} files and directories, past the server's"
                    f" max_layer_entries={self._settings.max_layer_entries}; make fewer"
                ), False
            return (
                f"the run wrote {used.bytes} bytes (data, directories and one inode per"
                f" entry), past its writable-layer limit max_layer_bytes={cap}; write less"
                " or raise resources_limits.max_layer_bytes"
            ), False
        if exit.limit_hit == "memory":
            return (
                f"the sandbox ran out of memory (limit {self._settings.memory_limit_bytes}"
                " bytes) and was killed; use less memory"
            ), False
        if exit.limit_hit == "pids":
            return (
                f"the sandbox hit its process limit ({self._settings.pids_limit} processes);"
                " start fewer processes"
            ), False
        if exit.runtime_error and exit.exit_code != 0:
            return f"the sandbox could not start the command: {exit.runtime_error}", False
        return None

    @staticmethod
    def _preserved_env(image: ImageRecord, spec: RunSpec) -> tuple[str, ...]:
        merged = image.env_map
        for key, value in spec.env.items():
            if value is None or value == "":
                merged.pop(key, None)
            else:
                merged[key] = value
        return tuple(f"{k}={v}" for k, v in merged.items())


def _describe(spec: RunSpec) -> str:
    if spec.shell:
        return spec.command
    return " ".join([spec.command, *spec.args])
