"""What the host's cgroups are and one sandbox's cgroup, whatever the mode.

Three host shapes exist (``detect``): ``v1`` (the legacy hierarchies only), ``hybrid`` (the
v1 controllers plus a cgroup2 mount at ``/sys/fs/cgroup/unified``, which holds no controller
we use: limits work through v1) and ``v2`` (one unified hierarchy, Debian 12, Ubuntu 24.04,
RHEL 9, Kubernetes nodes). ``SandboxCgroup`` is what the runtime needs from a sandbox's
cgroup; ``_cgroup_v1`` and ``_cgroup_v2`` implement it.

Every function takes the cgroup mount root as an argument so that tests can lay out a fake
tree in a temporary directory; production code passes ``CGROUP_ROOT``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import select
import time
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "CGROUP_ROOT",
    "PROC_SELF_CGROUP",
    "CgroupHost",
    "CgroupStats",
    "SandboxCgroup",
    "detect",
    "own_cgroup",
    "read_int",
    "read_kv",
    "rmdir_when_empty",
    "wait_unpopulated",
    "write",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: The v2 controllers a sandbox's limits need: memory.max, pids.max, cpu.max.
V2_CONTROLLERS = ("memory", "pids", "cpu")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")

CgroupMode = Literal["v1", "v2", "hybrid"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CgroupHost:
    """The host's cgroup layout as found at start.

    Attributes:
        mode: ``v1``, ``hybrid`` or ``v2``.
        root: where the cgroup filesystems are mounted (``/sys/fs/cgroup``).
        unified: the cgroup2 mount (``root`` on v2, ``root/unified`` on hybrid), or None.
        controllers: the controllers sandbox limits use that the host offers (v1: mounted
            hierarchies; v2: listed in the root's ``cgroup.controllers``).
        missing: one line per controller sandtree needs and cannot use, with the reason.
        subtree: v2 only: the cgroup sandboxes live in (``<subtree>/<sandbox id>``).
    """

    mode: CgroupMode
    root: Path
    unified: Path | None
    controllers: tuple[str, ...]
    missing: tuple[str, ...] = ()
    subtree: Path | None = None

    def describe(self) -> str:
        """One line for the startup banner and ``sandtree doctor``."""
        text = {
            "v1": "cgroup v1",
            "hybrid": "cgroup hybrid (limits through the v1 controllers)",
            "v2": "cgroup v2 (unified)",
        }[self.mode]
        text += f", controllers {' '.join(self.controllers) or 'none'}"
        if self.subtree is not None:
            text += f", sandboxes in {self.subtree}"
        if self.missing:
            text += "; missing: " + "; ".join(self.missing)
        return text


@dataclasses.dataclass(frozen=True, kw_only=True)
class CgroupStats:
    """What a sandbox used and which limit it hit, read after it ended."""

    user_cpu_time: float
    system_cpu_time: float
    max_memory_bytes: int
    oom_killed: bool
    pids_limit_hit: bool


class SandboxCgroup(Protocol):
    """One sandbox's cgroup (v1: a directory per controller; v2: one directory)."""

    id: str

    @property
    def runtime_path(self) -> str:
        """``linux.cgroupsPath`` for a runtime that manages cgroups itself (runc, runsc)."""

    def create(self, *, memory_bytes: int, pids: int, cpus: float) -> None:
        """Make the cgroup with its limits written, before anything runs in it."""

    def join(self) -> None:
        """Move the calling process in; safe between fork and exec (no allocation-heavy
        work, no locks)."""

    def stats(self) -> CgroupStats: ...

    def pids(self) -> set[int]:
        """Every process in the cgroup and its descendants."""

    def kill_all(self) -> None: ...

    def remove(self) -> None:
        """Kill what is left inside and remove the cgroup, children first."""


def own_cgroup(proc_cgroup: Path = PROC_SELF_CGROUP) -> str | None:
    """This process's v2 cgroup (the ``0::/path`` line), or None without one."""
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text(encoding="utf-8").splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
    return None


def detect(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> CgroupHost:
    """Which cgroup mode the host runs, and what of it sandbox limits can use.

    A hybrid host's v2 mount may be out of sight (a process started from a server's or a
    test run's private mount namespace, where it is hidden for crun). With ``proc_cgroup``
    (``/proc/self/cgroup``) such a host is still told from a pure v1 one: the kernel lists
    the v2 hierarchy there (``0::``) only once it has been mounted somewhere.
    """
    if (root / "cgroup.controllers").is_file():
        available = set(_words(root / "cgroup.controllers"))
        have = tuple(c for c in V2_CONTROLLERS if c in available)
        missing = tuple(
            f"{c}: not in {root / 'cgroup.controllers'} (the kernel lacks it or a v1 "
            "hierarchy holds it; boot with systemd.unified_cgroup_hierarchy=1)"
            for c in V2_CONTROLLERS
            if c not in available
        )
        return CgroupHost(mode="v2", root=root, unified=root, controllers=have, missing=missing)
    have = tuple(c for c in V1_CONTROLLERS if (root / c / "cgroup.procs").is_file())
    missing = tuple(
        f"{c}: no v1 hierarchy mounted at {root / c}" for c in V1_CONTROLLERS if c not in have
    )
    unified = root / "unified"
    mounted_elsewhere = proc_cgroup is not None and own_cgroup(proc_cgroup) is not None
    if (unified / "cgroup.controllers").is_file() or mounted_elsewhere:
        return CgroupHost(
            mode="hybrid", root=root, unified=unified, controllers=have, missing=missing
        )
    return CgroupHost(mode="v1", root=root, unified=None, controllers=have, missing=missing)


def _words(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except OSError:
        return []


def write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def read_int(path: Path) -> int:
    """The first number in a cgroup file; 0 when it is missing or says ``max``."""
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def read_kv(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``memory.events``, ``cpu.stat``…) as a dict; {} if missing."""
    out: dict[str, int] = {}
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    except OSError:
        pass
    return out


def wait_unpopulated(cgroup: Path, *, within: float = 2.0) -> bool:
    """Wait until ``cgroup.events`` says ``populated 0``; whether it did in time.

    cgroupfs reports a change of that file as POLLPRI on an open descriptor, so this sleeps
    in ``poll`` until the last task is gone instead of retrying on a timer. (A regular file,
    as in a test's fake tree, never reports POLLPRI: there it waits out ``within``.)
    """
    deadline = time.monotonic() + within
    try:
        fd = os.open(cgroup / "cgroup.events", os.O_RDONLY)
    except OSError:
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            try:
                data = os.pread(fd, 4096, 0).decode("ascii", "replace")
            except OSError:
                return True  # the cgroup itself is gone (ENODEV)
            if "populated 0" in data:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(left * 1000)
    finally:
        os.close(fd)


def rmdir_when_empty(cgroup: Path, *, within: float = 2.0) -> None:
    """Remove a cgroup directory. Just-killed tasks keep it busy (EBUSY) for a few
    milliseconds while the kernel reaps them; v2 says when through ``cgroup.events``, v1
    offers no event, so there this retries every 5 ms until ``within``."""
    deadline = time.monotonic() + within
    while True:
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
        events = read_kv(cgroup / "cgroup.events")
        if events.get("populated", 0):
            wait_unpopulated(cgroup, within=max(0.0, deadline - time.monotonic()))
        else:
            # v1, or a v2 cgroup already empty of tasks (a child cgroup is still going).
            time.sleep(0.005)
