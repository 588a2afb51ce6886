"""The two sides every latency sample compares: runs through the engine, and the bare OCI
runtime doing the same job on the same bundle (mount, cgroups and ``config.json`` included,
timed apart from the runtime process itself)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import _common
from _common import BenchError

_common.ensure_importable()

from sandtree.engine import (  # noqa: E402
    Engine,
    ImageRecord,
    OperationRecord,
    OperationStatus,
    RunSpec,
)
from sandtree.engine.layers._overlay import mount_overlay, unmount  # noqa: E402
from sandtree.engine.runtime import (  # noqa: E402
    Limits,
    OciRuntime,
    SandboxSpec,
)
from sandtree.engine.runtime._cgroups import SandboxCgroup  # noqa: E402
from sandtree.engine.runtime._host import sandbox_cgroup  # noqa: E402

TRUE = "/bin/true"
#: Pause between samples so a run's background cleanup does not land in the next sample.
SETTLE_S = 0.01


def ms(seconds: float) -> float:
    return seconds * 1000.0


def parse_ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- engine side ---------------------------------------------------------------------------------


@dataclasses.dataclass
class EngineSample:
    ms: float
    op: OperationRecord
    #: CPU time of this process (all threads) during the sample: the engine's own cost.
    cpu_ms: float
    #: Wall-clock (epoch) times of the spawn call and of wait_operation returning.
    t_spawn: float
    t_done: float


class EngineDriver:
    """Spawns runs and waits for them, checking that each one did what it was asked."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.op_ids: list[str] = []

    def spec(
        self, image: ImageRecord, tier: str, command: str, *, disposable: bool = True
    ) -> RunSpec:
        shell = command != TRUE
        return RunSpec(
            image=image.uuid,
            command=command,
            shell=shell,
            disposable=disposable,
            isolation=tier,
            timeout=600,
        )

    async def run(self, spec: RunSpec, *, expect_stdout: str | None = None) -> EngineSample:
        wall0 = time.time()
        c0 = time.process_time()
        t0 = time.perf_counter()
        op = await self.engine.spawn(spec)
        self.op_ids.append(op.uuid)
        op = await self.engine.wait_operation(op, timeout=900)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        self.check(op, expect_stdout)
        return EngineSample(
            ms=ms(elapsed), op=op, cpu_ms=ms(cpu), t_spawn=wall0, t_done=wall0 + elapsed
        )

    @staticmethod
    def check(op: OperationRecord, expect_stdout: str | None = None) -> None:
        result = op.result or {}
        code = result.get("state", {}).get("exit_code")
        if op.status != OperationStatus.SUCCESS or code != 0:
            stderr = result.get("stderr", {}).get("value", "")
            raise BenchError(
                f"engine run {op.uuid} ended {op.status} (exit {code}): {op.error or ''} "
                f"{stderr.strip()[:300]}"
            )
        if expect_stdout is not None:
            out = str(result.get("stdout", {}).get("value", "")).strip()
            if out != expect_stdout:
                raise BenchError(f"engine run printed {out!r}, the bare runtime {expect_stdout!r}")

    def phases(self, sample: EngineSample) -> dict[str, float]:
        """Where one run's time went, from the operation record and its event timestamps.

        spawn: ``Engine.spawn`` until the op row exists; queue: until EXECUTING was written;
        mount: overlay + run dirs (until the ``init`` event); start: cgroups, bundle and the
        runtime's fork/exec (until ``spawn``); sandbox: the runtime process plus cgroup stats
        and removal (until ``exit``); finish: unmount, commit, child image (until
        ``completion``); record: final op update, log flush and the waiter waking up.
        """
        op = sample.op
        ts = {e.type: parse_ts(e.ts) for e in self.engine.store.events(op.uuid)}
        created = parse_ts(op.created_at)
        started = parse_ts(op.started_at) if op.started_at else created
        marks = [
            ("spawn", sample.t_spawn, created),
            ("queue", created, started),
            ("mount", started, ts.get("init", started)),
            ("start", ts.get("init", started), ts.get("spawn", started)),
            ("sandbox", ts.get("spawn", started), ts.get("exit", started)),
            ("finish", ts.get("exit", started), ts.get("completion", started)),
            ("record", ts.get("completion", started), sample.t_done),
        ]
        return {name: ms(b - a) for name, a, b in marks}

    async def drain_background(self) -> float:
        """Wait for the engine's background tasks (compactions); returns seconds waited."""
        t0 = time.perf_counter()
        while self.engine._background:
            await asyncio.gather(*list(self.engine._background), return_exceptions=True)
        return time.perf_counter() - t0


# -- bare runtime side ----------------------------------------------------------------------------


@dataclasses.dataclass
class BareSandbox:
    spec: SandboxSpec
    cgroups: SandboxCgroup
    runtime: OciRuntime
    root: Path
    mounted: bool = False


@dataclasses.dataclass
class BareSample:
    run_ms: float
    setup_ms: float
    teardown_ms: float
    stdout: str
    #: CPU time of this process during setup + run + teardown (the runtime's own is not in it).
    cpu_ms: float


class BareRunner:
    """The same job minus the engine: our overlay, cgroups and bundle, then ``<runtime> run``.

    The bundle comes from ``OciRuntime.write_bundle`` and the argv from
    ``OciRuntime.command``, exactly as the engine's runtime produces them, and the runtime
    process joins the sandbox cgroups between fork and exec as in ``OciRuntime.start``.
    """

    def __init__(self, engine: Engine, work: Path) -> None:
        self.engine = engine
        self.work = work
        self.token = secrets.token_hex(3)
        self.mounts = Path("/run/sandtree") / f"bench-{os.getpid()}-{self.token}"
        self._runtimes: dict[str, OciRuntime] = {}
        self._live: dict[str, BareSandbox] = {}
        self._lock = threading.Lock()
        self._count = 0
        for d in (self.mounts.parent, self.mounts):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o711)

    def runtime(self, tier: str) -> OciRuntime:
        if tier not in self._runtimes:
            ours = self.engine.runs.runtime(tier)
            if not isinstance(ours, OciRuntime):
                raise BenchError(f"tier {tier} does not run on an OCI runtime")
            self._runtimes[tier] = OciRuntime(
                kind=ours.kind,
                binary=ours.binary,
                state_dir=self.work / "state" / ours.kind,
                uid_shift=ours.uid_shift,
            )
        return self._runtimes[tier]

    def prepare(self, tier: str, image: ImageRecord, spec: RunSpec) -> BareSandbox:
        """Mount the image's layers and write the bundle, as ``RunExecutor.execute`` would."""
        settings = self.engine.settings
        runtime = self.runtime(tier)
        with self._lock:
            self._count += 1
            sid = f"bb-{self.token}-{self._count}"
        root = self.work / "runs" / sid
        merged = self.mounts / sid
        for d in (root / "upper", root / "work", root / "bundle", merged):
            d.mkdir(parents=True)
        os.chown(root / "upper", settings.uid_shift, settings.uid_shift)
        args = ["/bin/sh", "-c", spec.command] if spec.shell else [spec.command, *spec.args]
        sandbox_spec = SandboxSpec(
            id=sid,
            rootfs=merged,
            workdir=root / "bundle",
            args=args,
            env=self.engine.runs.environment(image, spec),
            cwd=spec.cwd or image.cwd or "/",
            uid=spec.uid,
            gid=spec.gid,
            hostname=spec.hostname,
            limits=Limits(
                memory_bytes=settings.memory_limit_bytes,
                pids=settings.pids_limit,
                cpus=settings.cpu_limit,
            ),
        )
        sandbox = BareSandbox(sandbox_spec, sandbox_cgroup(sid), runtime, root)
        with self._lock:
            self._live[sid] = sandbox
        mount_overlay(
            self.engine.layers.paths(image.layers),
            merged,
            upper=root / "upper",
            work=root / "work",
            volatile=True,
        )
        sandbox.mounted = True
        # As OciRuntime.start makes it (on v2 with crun: ready for crun to start it inside).
        sandbox.cgroups = runtime.create_cgroup(sandbox_spec)
        runtime.write_bundle(sandbox_spec, sandbox.cgroups)
        return sandbox

    @staticmethod
    def run(sandbox: BareSandbox, *, join: bool = True) -> tuple[float, str]:
        """Run the runtime on the prepared bundle; returns (seconds, stdout).

        ``join=False`` leaves the runtime out of the sandbox cgroups (no limits at all): only
        for showing what joining them costs.
        """
        argv = list(sandbox.runtime.command(sandbox.spec))
        t0 = time.perf_counter()
        done = subprocess.run(
            argv,
            input=b"",
            capture_output=True,
            start_new_session=True,
            # A runtime that starts the sandbox inside its cgroup itself needs no join.
            preexec_fn=sandbox.cgroups.join if join and not sandbox.runtime.start_inside else None,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            runtime_log = sandbox.spec.workdir / "runtime.log"
            detail = runtime_log.read_text(errors="replace")[-300:] if runtime_log.exists() else ""
            raise BenchError(
                f"bare {sandbox.runtime.kind} run exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace')[-300:]} {detail}"
            )
        return elapsed, done.stdout.decode(errors="replace").strip()

    def teardown(self, sandbox: BareSandbox) -> None:
        with self._lock:
            self._live.pop(sandbox.spec.id, None)
        sandbox.cgroups.remove()
        if sandbox.mounted:
            unmount(sandbox.spec.rootfs)
            sandbox.mounted = False
        with contextlib.suppress(OSError):
            sandbox.spec.rootfs.rmdir()
        shutil.rmtree(sandbox.root, ignore_errors=True)

    def sample(
        self, tier: str, image: ImageRecord, spec: RunSpec, *, join: bool = True
    ) -> BareSample:
        c0 = time.process_time()
        t0 = time.perf_counter()
        sandbox = self.prepare(tier, image, spec)
        t1 = time.perf_counter()
        try:
            run_s, stdout = self.run(sandbox, join=join)
        finally:
            t2 = time.perf_counter()
            self.teardown(sandbox)
            t3 = time.perf_counter()
        cpu = time.process_time() - c0
        return BareSample(ms(run_s), ms(t1 - t0), ms(t3 - t2), stdout, ms(cpu))

    def burst(self, tier: str, image: ImageRecord, spec: RunSpec, n: int) -> float:
        """Start ``n`` prepared sandboxes at once (one thread each); returns the wall seconds."""
        sandboxes = [self.prepare(tier, image, spec) for _ in range(n)]
        errors: list[BaseException] = []
        start = threading.Barrier(n + 1)

        def worker(sandbox: BareSandbox) -> None:
            start.wait()
            try:
                self.run(sandbox)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sandboxes]
        try:
            for thread in threads:
                thread.start()
            start.wait()
            t0 = time.perf_counter()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - t0
        finally:
            start.abort()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            for sandbox in sandboxes:
                self.teardown(sandbox)
        if errors:
            raise errors[0]
        return wall

    def close(self) -> None:
        """Tear down whatever is still prepared, then the mount root and runtime state."""
        for sandbox in list(self._live.values()):
            with contextlib.suppress(Exception):
                self.teardown(sandbox)
        for runtime in self._runtimes.values():
            # Containers (and their cgroups) left in our runtime state dir.
            with contextlib.suppress(Exception):
                runtime.cleanup_stale()
        if self.mounts.is_dir():
            for leftover in self.mounts.iterdir():
                with contextlib.suppress(OSError):
                    unmount(leftover, lazy=True)
            shutil.rmtree(self.mounts, ignore_errors=True)
