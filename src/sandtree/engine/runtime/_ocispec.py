"""The OCI runtime-spec ``config.json`` every sandbox runs with.

Hardening, in the order a reviewer would look for it:

* a user namespace: root inside is ``uid_shift`` outside (the layer store keeps files shifted,
  so no per-run chown); no other host uid is mapped;
* Docker's default capability set (no CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE, …), and
  those capabilities only count inside the user namespace;
* ``noNewPrivileges``; a seccomp allow-list after Docker's (``_seccomp``): everything else
  (kernel modules, mounting, kexec, bpf, keyrings, namespaces, io_uring, …) gets EPERM;
* masked ``/proc`` entries and read-only ``/proc`` subtrees and ``/sys`` (a sysfs of the
  sandbox's own netns, so the host's interfaces are not listed);
* pid, ipc, uts, mount, cgroup and network namespaces (an empty network namespace when
  offline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandtree.engine.runtime._base import SandboxSpec
from sandtree.engine.runtime._seccomp import seccomp_profile

__all__ = ["ID_RANGE", "build_config", "build_process"]

#: How many ids the user namespace maps (0..65535 inside).
ID_RANGE = 65536

_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

# Docker's maskedPaths (moby daemon/oci defaults: /proc/interrupts and the RAPL energy
# counters under powercap, a side channel on other tenants' work, included), and ours.
_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/fs/selinux", "/sys/dev/block",
    "/sys/devices/virtual/powercap",
]  # fmt: skip

_READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip


def _sys_mount(spec: SandboxSpec) -> dict[str, Any]:
    if spec.netns:
        # sysfs can only be mounted by the owner of the network namespace; a joined (host-made)
        # namespace is not ours. The pool mounted one for it (its /sys/class/net shows lo and
        # eth0): bind that. Without it, bind the host's read-only like rootless runtimes do.
        return {
            "destination": "/sys",
            "type": "none",
            "source": spec.sysfs or "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        }
    return {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    }


#: The least RLIMIT_FSIZE a sandbox gets, whatever its ``max_file_bytes`` (see ``_rlimits``).
_MIN_FILE_CAP = 1024 * 1024


def _rlimits(spec: SandboxSpec) -> dict[str, Any]:
    if spec.max_file_bytes is None:
        return {}
    # No single file can outgrow the writable layer: a one-file disk filler stops at the cap
    # with EFBIG at once instead of between two looks at the layer's size.
    # Not below a floor: crun writes the compiled seccomp filter (about 5 KiB) to a file
    # under this limit before the command starts, and a smaller cap failed every start
    # ("SECCOMP_SET_MODE_FILTER: Invalid argument"). The layer's watcher still holds the
    # exact cap, so a file between the two ends the run as any write past the cap does.
    cap = max(spec.max_file_bytes, _MIN_FILE_CAP)
    return {"rlimits": [{"type": "RLIMIT_FSIZE", "hard": cap, "soft": cap}]}


def build_process(
    spec: SandboxSpec,
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    uid: int,
    gid: int,
) -> dict[str, Any]:
    """The ``process`` object: of the sandbox's main process, or of one exec'd into it (with
    the same capabilities, no_new_privs and file-size cap)."""
    caps = list(_CAPABILITIES)
    return {
        "terminal": False,
        "user": {"uid": uid, "gid": gid, "additionalGids": [gid]},
        "args": list(args),
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": True,
        **_rlimits(spec),
    }


def build_config(
    spec: SandboxSpec,
    *,
    uid_shift: int,
    seccomp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` for ``spec``; the same for crun, runc and runsc but for the
    seccomp filter (default: ``seccomp_profile()``), which the runtime decides."""
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "user"},
        # /proc/self/cgroup shows "/" instead of the host's cgroup path of the sandbox.
        {"type": "cgroup"},
    ]
    namespaces.append(
        {"type": "network", "path": spec.netns} if spec.netns else {"type": "network"}
    )
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "uidMappings": [{"containerID": 0, "hostID": uid_shift, "size": ID_RANGE}],
        "gidMappings": [{"containerID": 0, "hostID": uid_shift, "size": ID_RANGE}],
        "maskedPaths": _MASKED_PATHS,
        "readonlyPaths": _READONLY_PATHS,
    }
    linux["seccomp"] = dict(seccomp) if seccomp is not None else seccomp_profile()
    return {
        "ociVersion": "1.0.2",
        "process": build_process(spec, spec.args, spec.env, spec.cwd, spec.uid, spec.gid),
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            _sys_mount(spec),
        ],
        "linux": linux,
    }
