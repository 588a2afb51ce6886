"""Sandboxes under a real OCI runtime: crun (default), runc (fallback) or runsc (gVisor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sandtree._datadir import private_dir
from sandtree.engine.layers._paths import write_file_in_root
from sandtree.engine.runtime._base import ProcessSpec, SandboxExit, SandboxSpec
from sandtree.engine.runtime._cgroup_v2 import V2Cgroup
from sandtree.engine.runtime._cgroups import SandboxCgroup
from sandtree.engine.runtime._host import (
    ensure_inotify_headroom,
    runtime_prefix,
    sandbox_cgroup,
    v2_tree,
)
from sandtree.engine.runtime._ocispec import build_config, build_process
from sandtree.engine.runtime._process import AsyncProcess
from sandtree.engine.runtime._seccomp import seccomp_profile
from sandtree.engine.runtime._toolout import log_message
from sandtree.errors import ConflictError, InvalidRequestError, RuntimeUnavailableError

__all__ = ["INOTIFY_INSTANCES", "INOTIFY_WATCHES", "OciExec", "OciRuntime", "OciSandbox"]

_CHUNK = 64 * 1024
# Measured on this host kind: runsc (ptrace) idles at ~40 host tasks, ~10 more per process.
_RUNSC_BASE_TASKS = 64
_PID_FILE_WAIT = 5.0
_INIT_PID = "init.pid"
_RUNSC_TASKS_PER_PROCESS = 12
#: inotify instances and watches one crun sandbox may hold. The kernel charges them at every
#: user-namespace level up to the host's, and at the host's level to the namespace's creator
#: (root: crun runs as root), so without a cap in the sandbox's own namespace one tenant could
#: take all of host root's fs.inotify.max_user_instances (128 by default), for every other
#: sandbox and for the host's own root services. The sandbox cannot raise its cap: writing
#: /proc/sys/user/* needs CAP_SYS_RESOURCE, which it does not have.
INOTIFY_INSTANCES = 16
INOTIFY_WATCHES = 8192
#: Sandboxes at once the host's inotify limit is raised for (see ``ensure_inotify_headroom``).
_INOTIFY_SANDBOXES = 64

logger = logging.getLogger(__name__)


class _OciProcess:
    """A runtime process (``run`` or ``exec``) with its stdio as asyncio streams."""

    def __init__(self, process: AsyncProcess) -> None:
        self._process = process
        self._killed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    async def _read(self, stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while chunk := await stream.read(_CHUNK):
            yield chunk

    def stdout(self) -> AsyncIterator[bytes]:
        return self._read(self._process.stdout)

    def stderr(self) -> AsyncIterator[bytes]:
        return self._read(self._process.stderr)

    async def write_stdin(self, data: bytes, *, close: bool) -> None:
        stdin = self._process.stdin
        if stdin.is_closing():
            return
        try:
            if data:
                stdin.write(data)
                await stdin.drain()
            if close:
                stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            # The process exited without reading all of its input; that is its business.
            stdin.close()


async def _wait_for_file(
    path: Path, *, alive: AsyncProcess | None = None, within: float = _PID_FILE_WAIT
) -> bool:
    """Whether ``path`` appears within ``within`` seconds (while ``alive`` runs). Runtimes
    write their pid files once the process exists; nothing signals that moment, so look
    every few milliseconds until the deadline."""
    deadline = asyncio.get_running_loop().time() + within
    # A stat is cheaper inline than a thread hop.
    while not os.path.exists(path):  # noqa: ASYNC240
        if (alive is not None and alive.returncode is not None) or (
            asyncio.get_running_loop().time() > deadline
        ):
            return False
        await asyncio.sleep(0.005)
    return True


def _status(rc: int, *, killed: bool) -> tuple[int, int]:
    """``(exit_code, signal)`` from a runtime's exit status."""
    if rc > 128 and (killed or rc - 128 in (9, 15)):
        # Runtimes report a signal death like shells do: 128 + signal number.
        return rc, rc - 128
    if rc < 0:
        return 128 - rc, -rc
    return rc, 0


class OciExec(_OciProcess):
    """A process exec'd into a running sandbox (``<runtime> exec --process``)."""

    def __init__(
        self, process: AsyncProcess, pid_file: Path, deliver: Callable[[int, int], Awaitable[None]]
    ) -> None:
        super().__init__(process)
        self._pid_file = pid_file
        self._deliver = deliver

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the exec'd process (its host pid, from the runtime's pid file)."""
        self._killed = True
        pid = await self._container_pid()
        if pid is None:
            # It never started or is already gone: stop the runtime process itself.
            self._process.kill()
            return
        await self._deliver(pid, signum)

    async def _container_pid(self) -> int | None:
        if not await _wait_for_file(self._pid_file, alive=self._process):
            return None
        with contextlib.suppress(OSError, ValueError):
            return int(self._pid_file.read_text(encoding="ascii").strip())
        return None

    async def wait(self) -> SandboxExit:
        code, sig = _status(await self._process.wait(), killed=self._killed)
        return SandboxExit(exit_code=code, signal=sig)


class OciSandbox(_OciProcess):
    """One ``<runtime> run`` process and the cgroups around it."""

    def __init__(self, process: AsyncProcess, cgroups: SandboxCgroup, log_path: Path) -> None:
        super().__init__(process)
        self._cgroups = cgroups
        self._log_path = log_path

    async def kill(self) -> None:
        self._killed = True
        self._cgroups.kill_all()
        self._process.kill()

    async def wait(self) -> SandboxExit:
        rc = await self._process.wait()
        stats = self._cgroups.stats()
        # Removal may wait for the kernel to reap killed tasks: not on the event loop.
        await asyncio.to_thread(self._cgroups.remove)
        limit = "memory" if stats.oom_killed else ("pids" if stats.pids_limit_hit else None)
        runtime_error = None
        log = _read_log(self._log_path)
        if log and rc != 0:
            runtime_error = log
        code, sig = _status(rc, killed=self._killed or stats.oom_killed)
        return SandboxExit(
            exit_code=code,
            signal=sig,
            limit_hit=limit,
            user_cpu_time=stats.user_cpu_time,
            system_cpu_time=stats.system_cpu_time,
            max_rss_kb=stats.max_memory_bytes // 1024,
            runtime_error=runtime_error,
        )


def _read_log(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if not text:
        return None
    lines = []
    for line in text.splitlines()[-5:]:
        # crun logs JSON lines with --log-format=json; keep just the message.
        lines.append(log_message(line))
    return "; ".join(lines)


class OciRuntime:
    """Runs sandboxes with an OCI runtime binary from a generated bundle.

    Args:
        kind: ``crun``, ``runc`` or ``runsc``.
        binary: the executable (name on PATH or path).
        state_dir: the runtime's ``--root``; per server, so stale sandboxes can be found.
        uid_shift: the host uid that root inside maps to.
    """

    def __init__(self, *, kind: str, binary: str, state_dir: Path, uid_shift: int) -> None:
        if kind not in ("crun", "runc", "runsc"):
            raise ValueError(f"unknown OCI runtime kind {kind!r}")
        path = shutil.which(binary)
        if path is None:
            package = "runsc" if kind == "runsc" else kind
            raise RuntimeUnavailableError(
                f"the {kind} runtime ({binary}) is not installed; install the Debian package "
                f"'{package}' or choose another isolation tier"
            )
        self.kind = kind
        self.binary = path
        self.state_dir = state_dir
        self.uid_shift = uid_shift
        private_dir(state_dir)  # the runtime's own state: no other host user reads it
        #: Whether the runtime puts the sandbox's processes into its cgroup itself, so they
        #: start inside it and nothing migrates: crun on cgroup v2 starts the container's
        #: init in a child of our limited cgroup (measured on Linux 6.1: as fast as no cgroup
        #: at all; joining costs ~10 % of a `true` run), while the runtime process stays
        #: where the server is. Only where the kernel counts refused forks in our cgroup
        #: (``counts_pids_hierarchically``): crun removes its child when the sandbox ends, and
        #: on older kernels the pids-limit count goes with it. Otherwise (v1, hybrid, older
        #: v2 kernels, runc, runsc) the runtime process joins our cgroup between fork and
        #: exec and everything it starts inherits it. (CLONE_INTO_CGROUP from Python would
        #: need a raw clone3 in a threaded process: not safe, so not done.)
        tree = v2_tree()
        self.start_inside = (
            kind == "crun" and tree is not None and tree.counts_pids_hierarchically()
        )
        if kind != "runsc":
            ensure_inotify_headroom(INOTIFY_INSTANCES * _INOTIFY_SANDBOXES)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def supports_network(self) -> bool:
        # Debian 12's runsc (2022-12-19) takes every network namespace on kernels >= 6.x for
        # the root one and refuses --network=sandbox; --network=host inside our user namespace
        # fails its chroot set-up. A newer gVisor lifts this.
        return self.kind != "runsc"

    def _global_args(self, spec: SandboxSpec | None = None) -> list[str]:
        args = [self.binary, "--root", str(self.state_dir)]
        if self.kind == "runsc":
            # Debian's 2022 runsc mistakes every namespace for the root one on this kernel and
            # refuses --network=sandbox; --network=host inside our prepared namespace works.
            network = "host" if spec is not None and spec.netns else "none"
            # ptrace is the only gVisor platform that works on this host kind (no systrap in
            # Debian's build, KVM is PVM); --overlay2=none lets writes reach our upper dir;
            # --oci-seccomp applies the bundle's seccomp filter inside the Sentry, so both
            # tiers refuse the same syscalls (gVisor implements io_uring, for one).
            args += ["--platform=ptrace", f"--network={network}", "--overlay2=none",
                     "--oci-seccomp"]  # fmt: skip
        return args

    def _hooks(self) -> dict[str, Any]:
        """Hooks that cap inotify in the sandbox's user namespace (see ``INOTIFY_INSTANCES``).

        crun refuses ``user.*`` in ``linux.sysctl`` ("not namespaced"), but the values are
        per user namespace: a ``createRuntime`` hook (run by the runtime, on the host, once
        the namespaces exist and before the command starts) joins the sandbox's user
        namespace and writes them there. gVisor keeps inotify in its own kernel.
        """
        if self.kind == "runsc":
            return {}
        script = (
            'pid=$(sed -n \'s/.*"pid": *\\([0-9]*\\).*/\\1/p\') && [ -n "$pid" ] && '
            f'exec nsenter -U -t "$pid" sh -c '
            f"'echo {INOTIFY_INSTANCES} > /proc/sys/user/max_inotify_instances && "
            f"echo {INOTIFY_WATCHES} > /proc/sys/user/max_inotify_watches'"
        )
        sh = shutil.which("sh") or "/bin/sh"
        return {"createRuntime": [{"path": sh, "args": ["sh", "-c", script]}]}

    def _host_pids(self, pids: int) -> int:
        """The host pids limit that gives the sandbox ``pids`` processes.

        Under gVisor the host sees the Sentry's own ~40 threads, and each process inside
        adds a ptrace stub of ~10 tasks; a bare limit would stop a shell with ten children.
        """
        if self.kind == "runsc":
            return pids * _RUNSC_TASKS_PER_PROCESS + _RUNSC_BASE_TASKS
        return pids

    def command(self, spec: SandboxSpec) -> Sequence[str]:
        """The argv that runs ``spec`` (also used by the benchmark's bare-runtime baseline)."""
        log = spec.workdir / "runtime.log"
        args = [*runtime_prefix(), *self._global_args(spec)]
        if self.kind == "runsc" or self.kind == "runc":
            args += [f"--log={log}"]
        else:
            manager = "cgroupfs" if self.start_inside else "disabled"
            args += [f"--log=file:{log}", f"--cgroup-manager={manager}"]
        pid_file = spec.workdir / _INIT_PID
        return [*args, "run", "--pid-file", str(pid_file), "--bundle", str(spec.workdir), spec.id]

    def write_bundle(self, spec: SandboxSpec, cgroups: SandboxCgroup) -> None:
        config = build_config(
            spec,
            uid_shift=self.uid_shift,
            # gVisor's seccomp emulation answers EPERM for a rule's own errno: clone3 must
            # reach the Sentry, which answers ENOSYS (so libc falls back to clone) itself.
            seccomp=seccomp_profile(sentry=self.kind == "runsc"),
        )
        if hooks := self._hooks():
            config["hooks"] = hooks
        tmp = spec.rootfs / "tmp"
        if self.kind == "runsc" and tmp.is_dir() and not tmp.is_symlink():
            # gVisor mounts a tmpfs on /tmp unless the spec mounts something there; bind the
            # rootfs's own /tmp so what a run writes there is committed as under crun.
            config["mounts"].append(
                {"destination": "/tmp", "type": "bind", "source": str(tmp), "options": ["rbind"]}
            )
        if self.start_inside and isinstance(cgroups, V2Cgroup):
            # crun makes this child of our cgroup and starts the container in it; the limits
            # stay ours, one level up, where they hold for the whole subtree.
            config["linux"]["cgroupsPath"] = cgroups.container_path
        elif self.kind != "crun":
            # runsc and runc manage cgroups themselves: point them at ours (which they join)
            # and tell them the limits, which gVisor also applies inside its own kernel.
            config["linux"]["cgroupsPath"] = cgroups.runtime_path
            config["linux"]["resources"] = {
                "memory": {"limit": spec.limits.memory_bytes},
                "pids": {"limit": self._host_pids(spec.limits.pids)},
                **(
                    {"cpu": {"quota": int(spec.limits.cpus * 100000), "period": 100000}}
                    if spec.limits.cpus > 0
                    else {}
                ),
            }
        (spec.workdir / "config.json").write_text(json.dumps(config), encoding="utf-8")
        if spec.nameservers:
            self._write_resolv_conf(spec)

    def _write_resolv_conf(self, spec: SandboxSpec) -> None:
        """Point the image's /etc/resolv.conf at the lease's nameservers.

        The image owns that path and may have made it anything: a FIFO (opening it would wait
        for a writer for ever), a symlink to a host file, a directory. So it is never opened
        as found: it is resolved inside the rootfs and replaced by a new regular file.
        """
        text = "".join(f"nameserver {ns}\n" for ns in spec.nameservers)
        try:
            write_file_in_root(spec.rootfs, "/etc/resolv.conf", text.encode(), mode=0o644,
                               uid=self.uid_shift, gid=self.uid_shift)  # fmt: skip
        except (OSError, InvalidRequestError) as exc:
            # /etc is not a directory or resolv.conf is one: the image chose that, and the
            # run goes on with what its own files say, as it would without a network.
            logger.info("sandbox %s keeps its own /etc/resolv.conf: %s", spec.id, exc)

    async def start(self, spec: SandboxSpec) -> OciSandbox:
        cgroups = self.create_cgroup(spec)
        try:
            # The bundle write touches image content (resolv.conf): never on the event loop.
            await asyncio.to_thread(self.write_bundle, spec, cgroups)
            process = await AsyncProcess.start(
                self.command(spec),
                # Join the sandbox's cgroups before exec: the runtime and everything it starts
                # inherit them, with no window in which a process runs unlimited (unless the
                # runtime starts the sandbox inside them itself).
                preexec_fn=None if self.start_inside else cgroups.join,
            )
        except BaseException:
            cgroups.remove()
            raise
        return OciSandbox(process, cgroups, spec.workdir / "runtime.log")

    def create_cgroup(self, spec: SandboxSpec) -> SandboxCgroup:
        """Make ``spec``'s cgroup with its limits (also used by the benchmark's baseline)."""
        cgroups = sandbox_cgroup(spec.id)
        memory, pids, cpus = (
            spec.limits.memory_bytes,
            self._host_pids(spec.limits.pids),
            spec.limits.cpus,
        )
        if isinstance(cgroups, V2Cgroup):
            cgroups.create(memory_bytes=memory, pids=pids, cpus=cpus, nested=self.start_inside)
        else:
            cgroups.create(memory_bytes=memory, pids=pids, cpus=cpus)
        return cgroups

    async def exec(self, spec: SandboxSpec, process: ProcessSpec) -> OciExec:
        """Start ``process`` in the running sandbox ``spec``, in its cgroups."""
        if not await _wait_for_file(spec.workdir / _INIT_PID):
            raise ConflictError(
                "the sandbox is not running (it has not started yet or has already ended); "
                "retry once the operation's spawn event has arrived"
            )
        process_file = spec.workdir / f"{process.name}.json"
        pid_file = spec.workdir / f"{process.name}.pid"
        # crun writes the host pid; runsc's own pid file holds its exec helper, so ask it for
        # the sandbox-internal pid and signal through `runsc kill --pid`.
        pid_flag = "--internal-pid-file" if self.kind == "runsc" else "--pid-file"
        config = build_process(
            spec, process.args, process.env, process.cwd, process.uid, process.gid
        )
        process_file.write_text(json.dumps(config), encoding="utf-8")
        argv = [
            *runtime_prefix(),
            *self._global_args(spec),
            "exec",
            "--process",
            str(process_file),
            pid_flag,
            str(pid_file),
            spec.id,
        ]
        # crun placing the sandbox itself also puts an exec'd process in the container's
        # cgroup; otherwise the exec runtime joins ours, as the run did.
        join = None if self.start_inside else sandbox_cgroup(spec.id).join
        started = await AsyncProcess.start(argv, preexec_fn=join)

        async def deliver(pid: int, signum: int) -> None:
            if self.kind != "runsc":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
                return
            argv = [*runtime_prefix(), *self._global_args(spec), "kill", f"--pid={pid}",
                    spec.id, str(signum)]  # fmt: skip
            # runsc kill can fail transiently on a loaded host (it talks to the sandbox over
            # its control socket): try twice, and say so rather than leave the process be.
            for _ in range(2):
                killer = await AsyncProcess.start(argv)
                killer.stdin.close()
                _, err = await asyncio.gather(killer.stdout.read(), killer.stderr.read())
                if await killer.wait() == 0:
                    return
            raise RuntimeUnavailableError(
                f"runsc could not signal process {pid} of sandbox {spec.id}: "
                f"{err.decode(errors='replace').strip()[-300:]}; signal it again"
            )

        return OciExec(started, pid_file, deliver)

    def cleanup_stale(self) -> None:
        """Delete the containers a previous process of *this* server left in its state dir,
        and their cgroups (other servers' sandboxes on the host are left alone)."""
        if not self.state_dir.is_dir():
            return
        ids = set()
        for entry in self.state_dir.iterdir():
            if entry.is_dir():
                ids.add(entry.name)
            elif entry.name.endswith(".state") and "_sandbox:" in entry.name:
                # runsc keeps "<id>_sandbox:<id>.state" files rather than directories.
                ids.add(entry.name.split("_sandbox:", 1)[0])
        for sandbox_id in ids:
            sandbox_cgroup(sandbox_id).kill_all()
            subprocess.run(
                [*runtime_prefix(), *self._global_args(), "delete", "--force", sandbox_id],
                capture_output=True,
                check=False,
            )
            sandbox_cgroup(sandbox_id).remove()
