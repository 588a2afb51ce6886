"""Privileged host set-up, kept apart from the engine (firecracker's jailer split).

Two jobs:

* put the server in a private mount namespace, so every overlay it mounts disappears with it
  (no mount can outlive a crash) and, on hybrid cgroup hosts, hide the cgroup v2 mount that
  makes crun refuse to start (``cgroups in hybrid mode not supported``);
* know the host's cgroups (``host_cgroups``: v1, hybrid or v2, detected once, before the v2
  mount of a hybrid host is hidden) and hand out each sandbox's cgroup (``sandbox_cgroup``:
  ``_cgroup_v1`` or ``_cgroup_v2``; on v2 the first one prepares the delegated subtree).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import threading
from pathlib import Path

from sandtree.engine.runtime._cgroup_v1 import V1Cgroup
from sandtree.engine.runtime._cgroup_v2 import V2Tree
from sandtree.engine.runtime._cgroups import (
    CGROUP_ROOT,
    PROC_SELF_CGROUP,
    CgroupHost,
    SandboxCgroup,
    detect,
    write,
)

__all__ = [
    "ensure_inotify_headroom",
    "enter_private_mount_namespace",
    "host_cgroups",
    "sandbox_cgroup",
    "v2_tree",
]

logger = logging.getLogger(__name__)

_CGROUP_ROOT = CGROUP_ROOT
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)
_private_ns_done = False
_INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
#: What host root keeps for its own services beyond what sandboxes may take.
_INOTIFY_HOST_SHARE = 128


_detect_lock = threading.Lock()
_detected: CgroupHost | None = None
_v2_tree: V2Tree | None = None


def host_cgroups() -> CgroupHost:
    """The host's cgroup mode, found once per process (a hybrid host stays ``hybrid`` after
    its v2 mount is hidden in our namespace). On v2, ``subtree`` is where sandboxes live and,
    once the first sandbox prepared it, ``missing`` says which controllers it lacks and why."""
    global _detected, _v2_tree
    with _detect_lock:
        if _detected is None:
            _detected = detect(_CGROUP_ROOT, PROC_SELF_CGROUP)
            if _detected.mode == "v2":
                _v2_tree = V2Tree(_CGROUP_ROOT)
        found, tree = _detected, _v2_tree
    if tree is None:
        return found
    return dataclasses.replace(found, subtree=tree.base, missing=found.missing + tree.missing)


def v2_tree() -> V2Tree | None:
    """The v2 subtree sandboxes live in, prepared (None on v1 and hybrid hosts)."""
    host_cgroups()
    if _v2_tree is not None:
        _v2_tree.prepare()
    return _v2_tree


def sandbox_cgroup(sandbox_id: str) -> SandboxCgroup:
    """The cgroup of sandbox ``sandbox_id`` on this host (not created yet)."""
    tree = v2_tree()
    if tree is not None:
        return tree.cgroup(sandbox_id)
    return V1Cgroup(sandbox_id, root=_CGROUP_ROOT)


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
    host_cgroups()  # before the hybrid host's v2 mount disappears from our view
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
    v2 = (_CGROUP_ROOT / "cgroup.controllers").exists()
    return not v2 and unified.is_dir() and os.path.ismount(unified)


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
            write(_INOTIFY_INSTANCES, str(want))
            logger.info("raised fs.inotify.max_user_instances from %d to %d", have, want)
    except (OSError, ValueError) as exc:
        logger.warning("could not check fs.inotify.max_user_instances: %s", exc)
