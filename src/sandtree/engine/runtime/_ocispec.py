"""The OCI runtime-spec ``config.json`` every sandbox runs with.

Hardening, in the order a reviewer would look for it:

* a user namespace: root inside is ``uid_shift`` outside (the layer store keeps files shifted,
  so no per-run chown); no other host uid is mapped;
* Docker's default capability set (no CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE, …), and
  those capabilities only count inside the user namespace;
* ``noNewPrivileges``; a seccomp filter that refuses the syscalls a sandbox never needs
  (kernel modules, mounting, kexec, bpf, keyrings, namespaces, …) with EPERM;
* masked ``/proc`` entries and read-only ``/proc`` subtrees and ``/sys``;
* pid, ipc, uts, mount and network namespaces (an empty network namespace when offline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandtree.engine.runtime._base import SandboxSpec

__all__ = ["ID_RANGE", "build_config", "build_process"]

#: How many ids the user namespace maps (0..65535 inside).
ID_RANGE = 65536

_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/fs/selinux", "/sys/dev/block",
]  # fmt: skip

_READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip

# Refused with EPERM. Everything else is allowed: an allow-list of ~350 syscalls is what Docker
# ships, but a deny-list of what breaks isolation keeps new-but-harmless syscalls working.
_DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load",
    "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount",
    "move_pages", "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
    "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev", "quotactl",
    "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "stime",
    "swapoff", "swapon", "syslog", "umount", "umount2", "unshare", "uselib", "userfaultfd",
    "ustat", "vhangup", "vm86", "vm86old", "adjtimex", "_sysctl", "pidfd_getfd",
]  # fmt: skip

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                          0x20000000, 0x40000000)  # fmt: skip


def _seccomp() -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": _DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            # clone() asking for any new namespace (one rule per flag; rules on a syscall OR).
            *(
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 1,
                    "args": [
                        {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}
                    ],
                }
                for flag in _CLONE_NAMESPACE_FLAGS
            ),
            # clone3 passes flags in a struct seccomp cannot read: make libc fall back to clone.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    }


def _sys_mount(*, joined_netns: bool) -> dict[str, Any]:
    if joined_netns:
        # sysfs can only be mounted by the owner of the network namespace; a joined (host-made)
        # namespace is not ours, so bind the host's read-only like rootless runtimes do.
        return {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        }
    return {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    }


def _rlimits(spec: SandboxSpec) -> dict[str, Any]:
    if spec.max_file_bytes is None:
        return {}
    # No single file can outgrow the writable layer: a one-file disk filler stops at the cap
    # with EFBIG at once instead of between two looks at the layer's size.
    cap = spec.max_file_bytes
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


def build_config(spec: SandboxSpec, *, uid_shift: int, seccomp: bool = True) -> dict[str, Any]:
    """The ``config.json`` for ``spec``; identical for crun, runc and runsc."""
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "user"},
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
    if seccomp:
        linux["seccomp"] = _seccomp()
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
            _sys_mount(joined_netns=spec.netns is not None),
        ],
        "linux": linux,
    }
