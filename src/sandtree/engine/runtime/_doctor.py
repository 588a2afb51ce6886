"""Host checks: can this machine run sandtree, and if not, what to change.

``host_checks`` looks at the kernel, overlayfs, cgroups, user namespaces, seccomp, the OCI
runtimes, the networking tools and the data dir's filesystem, and returns one ``Finding`` per
check, each with the exact fix when it is not ``ok``. ``sandtree doctor`` prints them;
``sandtree serve`` refuses to start when a required one fails (``blocking``), so a host that
cannot run sandboxes says so at start instead of on its first run.

Everything is read through a ``HostView`` (the ``/proc`` and ``/sys`` roots, the ``PATH`` tools
are looked up on, the effective uid), so each check can be tested against a fake host.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Literal

from sandtree.config import Settings
from sandtree.engine.runtime import _cgroups as cgroups

__all__ = ["Finding", "HostView", "blocking", "host_checks"]

Status = Literal["ok", "warn", "fail"]

#: The oldest kernel with everything sandtree uses: openat2 (5.6), overlay ``volatile``
#: (5.10) for disposable runs, the new mount API (5.2).
MIN_KERNEL = (5, 10)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One host check's outcome.

    ``status`` is ``ok``, ``warn`` (works, with a caveat) or ``fail``; ``fix`` is the exact
    command or setting that makes it ``ok`` (empty when it is); a ``required`` check that
    fails stops ``sandtree serve`` from starting.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True

    def as_dict(self) -> dict[str, str | bool]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostView:
    """Where the checks look: the real host unless a test says otherwise."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    #: The ``PATH`` runtimes and tools are looked up on; None is this process's.
    path: str | None = None
    #: The effective uid the server would run as; None is this process's.
    euid: int | None = None

    def uid(self) -> int:
        return os.geteuid() if self.euid is None else self.euid


def blocking(findings: list[Finding]) -> list[Finding]:
    """The failed required findings: any of them stops ``sandtree serve``."""
    return [f for f in findings if f.required and f.status == "fail"]


def host_checks(
    settings: Settings, host: HostView | None = None, *, probe_data_dir: bool = True
) -> list[Finding]:
    """Every host check, in the order ``sandtree doctor`` prints them.

    ``probe_data_dir=False`` skips the checks that write to the data dir's filesystem (the
    xattr, ``d_type`` and overlay probes); free space and the filesystem type are still read.
    """
    # Imported here: both modules import Finding and HostView from this one.
    from sandtree.engine.runtime._doctor_fs import check_overlay_layers, data_dir_checks
    from sandtree.engine.runtime._doctor_tools import network_checks, runtime_checks

    view = host if host is not None else HostView()
    findings = [
        check_root(view),
        check_kernel(view),
        check_overlayfs(view),
        check_overlay_layers(view),
        check_cgroups(view, settings),
        check_user_namespaces(view, settings),
        check_seccomp(view),
        *runtime_checks(view, settings),
        *network_checks(view),
        *data_dir_checks(view, settings, probe=probe_data_dir),
    ]
    return findings


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def check_root(host: HostView) -> Finding:
    uid = host.uid()
    if uid == 0:
        return Finding(name="root", status="ok", detail="running as root (uid 0)")
    return Finding(
        name="root",
        status="fail",
        detail=f"running as uid {uid}; overlay mounts, cgroups and user namespaces need root",
        fix="run it as root: sudo sandtree …",
    )


def kernel_release(host: HostView) -> str:
    """The running kernel's release string (``uname -r``)."""
    text = _read(host.proc / "sys" / "kernel" / "osrelease")
    return text.strip() if text else os.uname().release


def parse_kernel_version(release: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else None


def check_kernel(host: HostView) -> Finding:
    release = kernel_release(host)
    version = parse_kernel_version(release)
    minimum = ".".join(map(str, MIN_KERNEL))
    if version is None:
        return Finding(
            name="kernel",
            status="warn",
            detail=f"cannot read a version from the release {release!r}",
            fix=f"make sure the kernel is Linux {minimum} or newer",
        )
    if version < MIN_KERNEL:
        return Finding(
            name="kernel",
            status="fail",
            detail=f"Linux {release} is older than {minimum} (openat2, overlay volatile)",
            fix=f"boot a Linux {minimum} or newer kernel (Debian 12's 6.1, RHEL 9's 5.14 work)",
        )
    return Finding(name="kernel", status="ok", detail=f"Linux {release}")


def check_overlayfs(host: HostView) -> Finding:
    filesystems = _read(host.proc / "filesystems") or ""
    if any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines()):
        return Finding(name="overlayfs", status="ok", detail="overlay is in /proc/filesystems")
    modules = _read(host.proc / "modules") or ""
    detail = "overlay is not in /proc/filesystems"
    if not any(line.startswith("overlay ") for line in modules.splitlines()):
        detail += " and its module is not loaded"
    return Finding(
        name="overlayfs",
        status="fail",
        detail=detail,
        fix="modprobe overlay && echo overlay > /etc/modules-load.d/sandtree.conf",
    )


def _wanted(settings: Settings, missing: tuple[str, ...]) -> list[str]:
    # Without a CPU quota the cpu controller is never written to: its absence is no failure.
    return [m for m in missing if settings.cpu_limit > 0 or not m.startswith("cpu:")]


def check_cgroups(host: HostView, settings: Settings) -> Finding:
    # /proc/self/cgroup tells a hybrid host whose v2 mount this process cannot see from v1.
    found = cgroups.detect(host.sys / "fs" / "cgroup", host.proc / "self" / "cgroup")
    detail = found.describe()
    if found.mode == "v2":
        mine = cgroups.own_cgroup(host.proc / "self" / "cgroup") or "/"
        detail += f"; sandtree runs in {mine}"
    missing = _wanted(settings, found.missing)
    if not missing:
        return Finding(name="cgroups", status="ok", detail=detail)
    names = [m.split(":", 1)[0] for m in missing]
    if found.mode == "v2":
        fix = (
            "give the v2 hierarchy every controller: add systemd.unified_cgroup_hierarchy=1 to "
            "GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, reboot (on a kernel built "
            f"with {', '.join(names)})"
        )
    else:
        first = names[0]
        fix = (
            f"mkdir -p /sys/fs/cgroup/{first} && mount -t cgroup -o {first} cgroup "
            f"/sys/fs/cgroup/{first}"
            + (" (the same for each one missing)" if len(names) > 1 else "")
        )
    return Finding(name="cgroups", status="fail", detail=detail, fix=fix)


def check_user_namespaces(host: HostView, settings: Settings) -> Finding:
    text = _read(host.proc / "sys" / "user" / "max_user_namespaces")
    sysctl_fix = (
        "sysctl -w user.max_user_namespaces=15000 && "
        "echo user.max_user_namespaces=15000 > /etc/sysctl.d/90-sandtree.conf"
    )
    if text is None or not (host.proc / "self" / "ns" / "user").exists():
        return Finding(
            name="user-namespaces",
            status="fail",
            detail="this kernel has no user namespaces (every sandbox runs in one)",
            fix="boot a kernel built with CONFIG_USER_NS=y (every distribution kernel is)",
        )
    try:
        limit = int(text.strip())
    except ValueError:
        limit = 0
    # One per running sandbox: fewer than max_concurrency would fail runs under load.
    if limit < settings.max_concurrency:
        return Finding(
            name="user-namespaces",
            status="fail",
            detail=f"user.max_user_namespaces is {limit}; sandtree runs up to "
            f"{settings.max_concurrency} sandboxes at once, one user namespace each",
            fix=sysctl_fix,
        )
    return Finding(
        name="user-namespaces", status="ok", detail=f"user.max_user_namespaces = {limit}"
    )


def check_seccomp(host: HostView) -> Finding:
    actions = (_read(host.proc / "sys" / "kernel" / "seccomp" / "actions_avail") or "").split()
    # The bundle's filter allows a list of syscalls and answers the rest with an errno.
    needed = ("allow", "errno")
    if all(a in actions for a in needed):
        return Finding(name="seccomp", status="ok", detail=f"filters: {' '.join(actions)}")
    status = _read(host.proc / "self" / "status") or ""
    has_seccomp = any(line.startswith("Seccomp:") for line in status.splitlines())
    detail = (
        "seccomp is on but its filter actions (allow, errno) are missing"
        if has_seccomp
        else "this kernel has no seccomp"
    )
    return Finding(
        name="seccomp",
        status="fail",
        detail=detail,
        fix="boot a kernel built with CONFIG_SECCOMP_FILTER=y (every distribution kernel is)",
    )
