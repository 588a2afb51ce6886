"""A sandbox's cgroups on v1 (and hybrid) hosts: ``/sandtree/<id>`` in memory, pids, cpu
and cpuacct.

The runtime process joins them before it execs (so every sandbox process inherits them; the
OCI runtime's own cgroup management is off), and after the sandbox exits we read peak memory,
CPU time and which limit was hit. v1 counts OOM kills and refused forks only in the cgroup
where the process lives, so a runtime-made child cgroup would take those counters with it:
that is why on v1 nothing runs in a child of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from sandtree.engine.runtime._cgroups import (
    CGROUP_ROOT,
    V1_CONTROLLERS,
    CgroupStats,
    read_int,
    read_kv,
    rmdir_when_empty,
    write,
)

__all__ = ["PARENT", "V1Cgroup"]

#: The directory under each hierarchy that holds sandtree's sandboxes.
PARENT = "sandtree"


class V1Cgroup:
    """The v1 cgroups of one sandbox."""

    def __init__(self, sandbox_id: str, *, root: Path = CGROUP_ROOT) -> None:
        self.id = sandbox_id
        self._root = root
        self._procs = [os.fsencode(self._dir(c) / "cgroup.procs") for c in V1_CONTROLLERS]

    @property
    def runtime_path(self) -> str:
        return f"/{PARENT}/{self.id}"

    def join(self) -> None:
        for path in self._procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def _dir(self, controller: str) -> Path:
        return self._root / controller / PARENT / self.id

    def create(self, *, memory_bytes: int, pids: int, cpus: float) -> None:
        for controller in V1_CONTROLLERS:
            self._dir(controller).mkdir(parents=True, exist_ok=True)
        mem = self._dir("memory")
        write(mem / "memory.limit_in_bytes", str(memory_bytes))
        # No swap: the memory limit is the limit (the file exists only with swap accounting).
        with contextlib.suppress(OSError):
            write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
        write(self._dir("pids") / "pids.max", str(pids))
        if cpus > 0:
            cpu = self._dir("cpu")
            write(cpu / "cpu.cfs_period_us", "100000")
            write(cpu / "cpu.cfs_quota_us", str(int(cpus * 100000)))

    def stats(self) -> CgroupStats:
        mem = self._dir("memory")
        acct = self._dir("cpuacct")
        oom = read_kv(mem / "memory.oom_control").get("oom_kill", 0)
        pids_events = read_kv(self._dir("pids") / "pids.events").get("max", 0)
        return CgroupStats(
            user_cpu_time=read_int(acct / "cpuacct.usage_user") / 1e9,
            system_cpu_time=read_int(acct / "cpuacct.usage_sys") / 1e9,
            max_memory_bytes=read_int(mem / "memory.max_usage_in_bytes"),
            oom_killed=oom > 0,
            pids_limit_hit=pids_events > 0,
        )

    def pids(self) -> set[int]:
        found: set[int] = set()
        for controller in ("pids", "memory"):
            base = self._dir(controller)
            if not base.is_dir():
                continue
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        # runsc creates the id in every hierarchy, not just the ones we limit.
        controllers = (
            {p.name for p in self._root.iterdir() if p.is_dir()} if self._root.is_dir() else set()
        )
        for controller in sorted(controllers | set(V1_CONTROLLERS)):
            base = self._dir(controller)
            if not base.is_dir():
                continue
            for child in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
                if child.is_dir():
                    rmdir_when_empty(child)
            rmdir_when_empty(base)
