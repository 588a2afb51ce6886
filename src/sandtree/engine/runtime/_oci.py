"""Sandboxes under a real OCI runtime: crun (default), runc (fallback) or runsc (gVisor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from sandtree.engine.runtime._base import SandboxExit, SandboxSpec
from sandtree.engine.runtime._host import CgroupSet, runtime_prefix
from sandtree.engine.runtime._ocispec import build_config
from sandtree.engine.runtime._process import AsyncProcess
from sandtree.errors import RuntimeUnavailableError

__all__ = ["OciRuntime", "OciSandbox"]

_CHUNK = 64 * 1024
# Measured on this host kind: runsc (ptrace) idles at ~40 host tasks, ~10 more per process.
_RUNSC_BASE_TASKS = 64
_RUNSC_TASKS_PER_PROCESS = 12


class OciSandbox:
    """One ``<runtime> run`` process and the cgroups around it."""

    def __init__(self, process: AsyncProcess, cgroups: CgroupSet, log_path: Path) -> None:
        self._process = process
        self._cgroups = cgroups
        self._log_path = log_path
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
        code, sig = rc, 0
        if rc > 128 and (self._killed or stats.oom_killed or rc - 128 in (9, 15)):
            # Runtimes report a signal death like shells do: 128 + signal number.
            sig = rc - 128
        elif rc < 0:
            code, sig = 128 - rc, -rc
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
        with contextlib.suppress(ValueError, TypeError):
            line = json.loads(line).get("msg", line)
        lines.append(str(line))
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
        state_dir.mkdir(parents=True, exist_ok=True)

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
            # Debian's build, KVM is PVM); --overlay2=none lets writes reach our upper dir.
            args += ["--platform=ptrace", f"--network={network}", "--overlay2=none"]
        return args

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
            args += [f"--log=file:{log}", "--cgroup-manager=disabled"]
        return [*args, "run", "--bundle", str(spec.workdir), spec.id]

    def write_bundle(self, spec: SandboxSpec, cgroups: CgroupSet) -> None:
        config = build_config(
            spec,
            uid_shift=self.uid_shift,
            # gVisor's Sentry filters syscalls itself; its seccomp emulation of ours is partial.
            seccomp=self.kind != "runsc",
        )
        tmp = spec.rootfs / "tmp"
        if self.kind == "runsc" and tmp.is_dir() and not tmp.is_symlink():
            # gVisor mounts a tmpfs on /tmp unless the spec mounts something there; bind the
            # rootfs's own /tmp so what a run writes there is committed as under crun.
            config["mounts"].append(
                {"destination": "/tmp", "type": "bind", "source": str(tmp), "options": ["rbind"]}
            )
        if self.kind != "crun":
            # runsc and runc manage cgroups themselves: point them at ours (which they join)
            # and tell them the limits, which gVisor also applies inside its own kernel.
            config["linux"]["cgroupsPath"] = f"/{CgroupSet.PARENT}/{spec.id}"
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

    @staticmethod
    def _write_resolv_conf(spec: SandboxSpec) -> None:
        etc = spec.rootfs / "etc"
        if etc.is_dir() and not etc.is_symlink():
            resolv = etc / "resolv.conf"
            with contextlib.suppress(OSError):
                if resolv.is_symlink():
                    resolv.unlink()
                resolv.write_text(
                    "".join(f"nameserver {ns}\n" for ns in spec.nameservers), encoding="utf-8"
                )

    async def start(self, spec: SandboxSpec) -> OciSandbox:
        cgroups = CgroupSet(spec.id)
        cgroups.create(
            memory_bytes=spec.limits.memory_bytes,
            pids=self._host_pids(spec.limits.pids),
            cpus=spec.limits.cpus,
        )
        try:
            self.write_bundle(spec, cgroups)
            process = await AsyncProcess.start(
                self.command(spec),
                # Join the sandbox's cgroups before exec: the runtime and everything it starts
                # inherit them, with no window in which a process runs unlimited.
                preexec_fn=cgroups.join,
            )
        except BaseException:
            cgroups.remove()
            raise
        return OciSandbox(process, cgroups, spec.workdir / "runtime.log")

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
            CgroupSet(sandbox_id).kill_all()
            subprocess.run(
                [*runtime_prefix(), *self._global_args(), "delete", "--force", sandbox_id],
                capture_output=True,
                check=False,
            )
            CgroupSet(sandbox_id).remove()
