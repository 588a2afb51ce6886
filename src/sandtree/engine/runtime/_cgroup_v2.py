"""Sandboxes' cgroups on a cgroup v2 (unified) host.

Where they live (``V2Tree.plan``): in the cgroup sandtree was started in when that one is
delegated to it (a systemd unit with ``Delegate=yes``; systemd marks it with the
``trusted.delegate`` xattr), else in a ``sandtree`` cgroup it makes under the root. v2 allows
no processes in a cgroup that hands controllers to its children, so in its own cgroup the
server first moves itself (and whatever else runs there) into a leaf, ``<base>/server``, and
only then enables ``+memory +pids +cpu`` in ``<base>/cgroup.subtree_control``. Each sandbox
gets ``<base>/<id>`` with ``memory.max``, ``memory.swap.max`` 0, ``pids.max`` and ``cpu.max``.

v2 counts hierarchically (``memory.events``, ``memory.peak``, ``cpu.stat``; ``pids.events``
in the cgroup whose limit was hit, ours), so a runtime may put the sandbox's processes in a
child of ours (``container_path``) and our limits and counters still hold for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import threading
from pathlib import Path

from sandtree.engine.runtime._cgroups import (
    CGROUP_ROOT,
    PROC_SELF_CGROUP,
    V2_CONTROLLERS,
    CgroupStats,
    own_cgroup,
    read_int,
    read_kv,
    rmdir_when_empty,
    write,
)

__all__ = ["CONTAINER_LEAF", "SERVER_LEAF", "V2Cgroup", "V2Plan", "V2Tree"]

logger = logging.getLogger(__name__)

#: The leaf the server moves into inside its own delegated cgroup.
SERVER_LEAF = "server"
#: The child of a sandbox's cgroup that a runtime placing processes itself (crun) uses.
CONTAINER_LEAF = "sandbox"
_DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclasses.dataclass(frozen=True, kw_only=True)
class V2Plan:
    """Where sandboxes go. ``leaf`` is where the server must live (None: it stays put)."""

    base: Path
    delegated: bool
    leaf: Path | None


def _delegated(path: Path) -> bool:
    for name in _DELEGATE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(path, name).strip(b"\0") == b"1":
                return True
    return False


class V2Tree:
    """The sandtree subtree of a v2 hierarchy, prepared once per process (``prepare``)."""

    def __init__(self, root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> None:
        self.root = root
        self._proc_cgroup = proc_cgroup
        self._lock = threading.Lock()
        self._prepared: tuple[str, ...] | None = None
        self._plan: V2Plan | None = None
        self.missing: tuple[str, ...] = ()

    def plan(self) -> V2Plan:
        """Where sandboxes will live; reads only, changes nothing."""
        own = own_cgroup(self._proc_cgroup) or "/"
        here = self.root / own.lstrip("/")
        if own != "/" and _delegated(here):
            return V2Plan(base=here, delegated=True, leaf=here / SERVER_LEAF)
        if own != "/" and here.name == SERVER_LEAF and _delegated(here.parent):
            # Started by a process that already sits in a sandtree server leaf (a test
            # harness, a restart in place): that subtree is ours already.
            return V2Plan(base=here.parent, delegated=True, leaf=None)
        return V2Plan(base=self.root / "sandtree", delegated=False, leaf=None)

    def prepare(self) -> tuple[str, ...]:
        """Make the subtree usable; returns the controllers sandboxes get (once per tree).

        ``missing`` then says, one line each, which controllers cannot be had and why.
        """
        with self._lock:
            if self._prepared is None:
                self._plan = self.plan()
                self._prepared = self._prepare(self._plan)
            return self._prepared

    @property
    def base(self) -> Path:
        """Where sandboxes live: as prepared (the server has since moved), else as planned."""
        return (self._plan or self.plan()).base

    def _prepare(self, plan: V2Plan) -> tuple[str, ...]:
        plan.base.mkdir(exist_ok=True)
        if plan.leaf is not None:
            plan.leaf.mkdir(exist_ok=True)
            _move_all(plan.base, plan.leaf)
        reasons = self._enable(plan.base)
        self.missing = tuple(f"{c}: {reasons[c]}" for c in V2_CONTROLLERS if c in reasons)
        if self.missing:
            logger.warning(
                "cgroup v2 controllers missing for sandboxes: %s", "; ".join(self.missing)
            )
        return tuple(c for c in V2_CONTROLLERS if c not in reasons)

    def _enable(self, base: Path) -> dict[str, str]:
        """Enable the controllers from the root down to ``base``'s children; for each one
        that could not be, why. One write per level ("+memory +pids +cpu"), and one per
        controller only when that failed, to tell which."""
        chain = [p for p in [base, *base.parents] if p == self.root or self.root in p.parents]
        reasons: dict[str, str] = {}
        # A cgroup offers (cgroup.controllers) what its parent hands down (subtree_control).
        offered = set(_words(self.root / "cgroup.controllers"))
        for cgroup in reversed(chain):  # root first: a child can only enable what it has
            enabled = set(_words(cgroup / "cgroup.subtree_control"))
            wanted = []
            for c in V2_CONTROLLERS:
                if c in reasons or c in enabled:
                    continue
                if c not in offered:
                    reasons[c] = f"{cgroup} does not offer it (its cgroup.controllers)"
                else:
                    wanted.append(c)
            if wanted:
                try:
                    write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
                    enabled.update(wanted)
                except OSError:
                    for c in wanted:  # which one the kernel refuses, and why
                        try:
                            write(cgroup / "cgroup.subtree_control", f"+{c}")
                            enabled.add(c)
                        except OSError as exc:
                            reasons[c] = _refusal(cgroup, c, exc)
            offered = enabled
        return reasons

    def counts_pids_hierarchically(self, mountinfo: Path = _MOUNTINFO) -> bool:
        """Whether a refused fork is counted in the cgroup whose ``pids.max`` refused it
        (and its ancestors), wherever the forking process lives.

        Older kernels (Linux 6.1, 6.8, RHEL 9's 5.14) count it only in the forking
        process's own cgroup: a runtime-made child of ours, which the runtime removes when the
        sandbox ends, takes the count with it. Kernels that count hierarchically have
        ``pids.events.local`` beside ``pids.events`` (unless mounted ``pids_localevents``).
        """
        if not (self.base / "pids.events.local").is_file():
            return False
        with contextlib.suppress(OSError):
            for line in mountinfo.read_text(encoding="utf-8").splitlines():
                fields = line.split()
                if len(fields) > 4 and fields[4] == str(self.root):
                    return "pids_localevents" not in line
        return True

    def cgroup(self, sandbox_id: str) -> V2Cgroup:
        return V2Cgroup(sandbox_id, base=self.base, root=self.root)


def _refusal(cgroup: Path, controller: str, exc: OSError) -> str:
    if exc.errno == errno.EBUSY:
        return (
            f"{cgroup} has processes of its own, and v2 forbids enabling controllers there; "
            "run sandtree in a cgroup of its own (the systemd unit has Delegate=yes)"
        )
    return f"writing +{controller} to {cgroup / 'cgroup.subtree_control'}: {exc.strerror}"


def _move_all(source: Path, leaf: Path) -> None:
    """Move every process of ``source`` into ``leaf`` (v2's no-internal-processes rule).
    New ones may fork meanwhile: repeat until the cgroup is empty, a few times at most."""
    for _ in range(5):
        pids = _words(source / "cgroup.procs")
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                try:
                    write(leaf / "cgroup.procs", pid)
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise


def _words(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except OSError:
        return []


class V2Cgroup:
    """One sandbox's cgroup, ``<base>/<id>``."""

    def __init__(self, sandbox_id: str, *, base: Path, root: Path = CGROUP_ROOT) -> None:
        self.id = sandbox_id
        self.dir = base / sandbox_id
        self._root = root
        self._procs = os.fsencode(self.dir / "cgroup.procs")

    @property
    def runtime_path(self) -> str:
        return "/" + str(self.dir.relative_to(self._root))

    @property
    def container_path(self) -> str:
        """``linux.cgroupsPath`` for a runtime that places the processes itself: a child of
        ours, so our limits hold over it and our counters see it."""
        return f"{self.runtime_path}/{CONTAINER_LEAF}"

    def create(self, *, memory_bytes: int, pids: int, cpus: float, nested: bool = False) -> None:
        """Make the cgroup with its limits. ``nested``: the processes will live in a child
        (``container_path``), so the controllers are handed down to it as well."""
        self.dir.mkdir(exist_ok=True)
        write(self.dir / "memory.max", str(memory_bytes))
        # No swap: the memory limit is the limit. The file is absent without swap accounting
        # (and cgroupfs makes no file on open).
        if (self.dir / "memory.swap.max").exists():
            write(self.dir / "memory.swap.max", "0")
        write(self.dir / "pids.max", str(pids))
        if cpus > 0:
            write(self.dir / "cpu.max", f"{int(cpus * 100000)} 100000")
        if nested:
            write(self.dir / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))

    def join(self) -> None:
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def stats(self) -> CgroupStats:
        events = read_kv(self.dir / "memory.events")
        cpu = read_kv(self.dir / "cpu.stat")
        oom = events.get("oom_kill", 0) > 0
        return CgroupStats(
            user_cpu_time=cpu.get("user_usec", 0) / 1e6,
            system_cpu_time=cpu.get("system_usec", 0) / 1e6,
            max_memory_bytes=self._peak(oom_killed=oom),
            oom_killed=oom,
            pids_limit_hit=read_kv(self.dir / "pids.events").get("max", 0) > 0,
        )

    def _peak(self, *, oom_killed: bool) -> int:
        """``memory.peak`` (Linux >= 5.19). Without it, a lower bound: what is still charged
        (``memory.current``: page cache the run left), or the limit when the run was
        OOM-killed (it reached the limit by definition)."""
        peak = self.dir / "memory.peak"
        if peak.exists():
            return read_int(peak)
        current = read_int(self.dir / "memory.current")
        return max(current, read_int(self.dir / "memory.max")) if oom_killed else current

    def pids(self) -> set[int]:
        found: set[int] = set()
        if self.dir.is_dir():
            for procs in self.dir.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self) -> None:
        """``cgroup.kill`` (Linux >= 5.14) kills the whole subtree at once, forks in flight
        too; older kernels get a SIGKILL per process found."""
        kill = self.dir / "cgroup.kill"
        if kill.exists():
            with contextlib.suppress(OSError):
                write(kill, "1")
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        if not self.dir.is_dir():
            return
        for child in sorted(self.dir.rglob("*"), key=lambda p: -len(p.parts)):
            if child.is_dir():
                rmdir_when_empty(child)
        rmdir_when_empty(self.dir)
