"""Privileged host set-up, kept apart from the engine (firecracker's jailer split).

Two jobs:

* put the server in a private mount namespace, so every overlay it mounts disappears with it
  (no mount can outlive a crash) and, on hybrid cgroup hosts, hide the cgroup v2 mount that
  makes crun refuse to start (``cgroups in hybrid mode not supported``);
* own each sandbox's cgroups: we create them with the limits set, the runtime process joins
  them before it execs (so every sandbox process inherits them; the OCI runtime's own cgroup
  management is off), and after the sandbox exits we read peak memory, CPU time and which
  limit was hit (v1 counts OOM kills and refused forks only in the cgroup where the process
  lives, so a runtime-made child cgroup would take those counters with it) before removing them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import signal
import time
from pathlib import Path

__all__ = [
    "CgroupSet",
    "CgroupStats",
    "ensure_inotify_headroom",
    "enter_private_mount_namespace",
    "host_cgroup_mode",
]

logger = logging.getLogger(__name__)

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)
_private_ns_done = False
_INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
#: What host root keeps for its own services beyond what sandboxes may take.
_INOTIFY_HOST_SHARE = 128


def host_cgroup_mode() -> str:
    """``v1`` (legacy or hybrid: the v1 controllers are where limits work) or ``v2``."""
    if (_CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2"
    return "v1"


def enter_private_mount_namespace() -> bool:
    """Move this process into a private mount namespace (once). Call before starting threads.

    Returns False when that was impossible (e.g. the process already has threads); callers
    then wrap each runtime invocation in ``unshare -m`` instead (see ``runtime_prefix``).
    """
    global _private_ns_done
    if _private_ns_done:
        return True
    if _libc.unshare(_CLONE_NEWNS) != 0:
        return False
    if _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making / private failed: {os.strerror(err)}")
    _hide_unified_cgroup()
    _private_ns_done = True
    return True


def in_private_mount_namespace() -> bool:
    return _private_ns_done


def runtime_prefix() -> list[str]:
    """Argv prefix for runtime invocations when the process could not go private itself."""
    if _private_ns_done or not _hybrid_unified_mounted():
        return []
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"',
        "sh",
    ]


def _hybrid_unified_mounted() -> bool:
    unified = _CGROUP_ROOT / "unified"
    return host_cgroup_mode() == "v1" and unified.is_dir() and os.path.ismount(unified)


def _hide_unified_cgroup() -> None:
    if _hybrid_unified_mounted() and _libc.umount2(b"/sys/fs/cgroup/unified", 0) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"unmounting the cgroup v2 mount failed: {os.strerror(err)}")


def ensure_inotify_headroom(sandbox_share: int) -> None:
    """Raise the host's ``fs.inotify.max_user_instances`` so that sandboxes, which are all
    charged to host root (the creator of their user namespaces), can hold ``sandbox_share``
    instances between them and host root still has its own 128. Never lowers it."""
    want = sandbox_share + _INOTIFY_HOST_SHARE
    try:
        have = int(_INOTIFY_INSTANCES.read_text(encoding="ascii").strip())
        if have < want:
            _write(_INOTIFY_INSTANCES, str(want))
            logger.info("raised fs.inotify.max_user_instances from %d to %d", have, want)
    except (OSError, ValueError) as exc:
        logger.warning("could not check fs.inotify.max_user_instances: %s", exc)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CgroupStats:
    user_cpu_time: float
    system_cpu_time: float
    max_memory_bytes: int
    oom_killed: bool
    pids_limit_hit: bool


class CgroupSet:
    """The v1 cgroups of one sandbox: ``/sandtree/<id>`` in memory, pids, cpu and cpuacct."""

    PARENT = "sandtree"

    def __init__(self, sandbox_id: str) -> None:
        self.id = sandbox_id
        self._procs = [os.fsencode(self._dir(c) / "cgroup.procs") for c in _V1_CONTROLLERS]

    def join(self) -> None:
        """Move the calling process into the cgroups; safe to call between fork and exec."""
        for path in self._procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def _dir(self, controller: str) -> Path:
        return _CGROUP_ROOT / controller / self.PARENT / self.id

    def create(self, *, memory_bytes: int, pids: int, cpus: float) -> None:
        for controller in _V1_CONTROLLERS:
            self._dir(controller).mkdir(parents=True, exist_ok=True)
        mem = self._dir("memory")
        _write(mem / "memory.limit_in_bytes", str(memory_bytes))
        # No swap: the memory limit is the limit.
        with contextlib.suppress(OSError):
            _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
        _write(self._dir("pids") / "pids.max", str(pids))
        if cpus > 0:
            cpu = self._dir("cpu")
            _write(cpu / "cpu.cfs_period_us", "100000")
            _write(cpu / "cpu.cfs_quota_us", str(int(cpus * 100000)))

    def stats(self) -> CgroupStats:
        mem = self._dir("memory")
        acct = self._dir("cpuacct")
        oom = _read_kv(mem / "memory.oom_control").get("oom_kill", 0)
        pids_events = _read_kv(self._dir("pids") / "pids.events").get("max", 0)
        return CgroupStats(
            user_cpu_time=_read_int(acct / "cpuacct.usage_user") / 1e9,
            system_cpu_time=_read_int(acct / "cpuacct.usage_sys") / 1e9,
            max_memory_bytes=_read_int(mem / "memory.max_usage_in_bytes"),
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
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Kill what is left inside and remove the cgroups, children first."""
        self.kill_all()
        # runsc creates the id in every hierarchy, not just the ones we limit.
        controllers = (
            {p.name for p in _CGROUP_ROOT.iterdir() if p.is_dir()}
            if _CGROUP_ROOT.is_dir()
            else set()
        )
        for controller in sorted(controllers | set(_V1_CONTROLLERS)):
            base = self._dir(controller)
            if not base.is_dir():
                continue
            for child in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
                if child.is_dir():
                    _rmdir_when_empty(child)
            _rmdir_when_empty(base)


def _rmdir_when_empty(cgroup: Path, *, within: float = 2.0) -> None:
    """Remove a cgroup directory. Just-killed tasks keep it busy (EBUSY) for a few
    milliseconds while the kernel reaps them, and v1 offers no event for that moment."""
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
        time.sleep(0.005)


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    except OSError:
        pass
    return out
