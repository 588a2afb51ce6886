"""Host checks of the programs sandtree runs: the OCI runtimes and the networking tools.

Each program is looked up on the host's ``PATH`` and asked for its version; the output is
parsed defensively (a version this code has never seen, or none at all, is a warning, never a
crash), since these formats change between releases.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from sandtree.config import Settings
from sandtree.engine.runtime._doctor import Finding, HostView
from sandtree.engine.runtime._toolout import iptables_version

__all__ = [
    "network_checks",
    "parse_iproute2_version",
    "parse_runtime_version",
    "runtime_checks",
]

#: How long one ``--version`` may take; a runtime that hangs on it is broken.
_VERSION_TIMEOUT = 10.0


def _version_output(binary: str, args: list[str]) -> tuple[str | None, str]:
    """``(stdout + stderr, "")`` of ``binary args``, or ``(None, why it could not run)``."""
    try:
        done = subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_VERSION_TIMEOUT,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        first = output.strip().splitlines()[:1]
        return None, f"exit status {done.returncode}" + (f": {first[0]}" if first else "")
    return output, ""


def parse_runtime_version(output: str) -> str | None:
    """``1.8.1`` from ``crun version 1.8.1``, ``0.0~20221219.0`` from runsc's, ``1.1.5+ds1``
    from runc's; None when no line says ``version``."""
    match = re.search(r"\bversion:?\s+v?(\d[\w.+~:-]*)", output, re.IGNORECASE)
    return match[1] if match else None


def parse_iproute2_version(output: str) -> str | None:
    """``6.1.0`` from ``ip utility, iproute2-6.1.0, libbpf 1.1.2``, ``ss200127`` from the
    older ``ip utility, iproute2-ss200127``."""
    match = re.search(r"iproute2-([\w.]+)", output)
    return match[1] if match else None


def _which(binary: str, host: HostView) -> str | None:
    return shutil.which(binary, path=host.path)


def _runtime(
    kind: str, binary: str, host: HostView, *, missing: Finding, fix: str, needed: bool
) -> tuple[Finding, bool]:
    """The finding for one runtime and whether it is usable; ``missing`` is the finding
    when it is not installed, ``needed`` whether the server needs it when it is."""
    path = _which(binary, host)
    if path is None:
        return missing, False
    output, why = _version_output(path, ["--version"])
    if output is None:
        return Finding(
            name=kind,
            status="fail" if needed else "warn",
            detail=f"{path} is there but `{kind} --version` failed ({why})",
            fix=fix,
            required=needed,
        ), False
    version = parse_runtime_version(output)
    shown = version if version is not None else "of an unknown version"
    return Finding(name=kind, status="ok", detail=f"{kind} {shown} ({path})", required=needed), True


def runtime_checks(host: HostView, settings: Settings) -> list[Finding]:
    """crun (the ``container`` tier), runc (its fallback) and runsc (the ``gvisor`` tier)."""
    runc_path = _which(settings.runc_path, host)
    crun, crun_ok = _runtime(
        "crun",
        settings.crun_path,
        host,
        missing=Finding(
            name="crun",
            status="warn" if runc_path else "fail",
            detail=f"{settings.crun_path} is not installed; "
            + ("the container tier uses runc (about 2.5x slower)" if runc_path else
               "the container tier has no runtime (nor runc)"),
            fix="apt-get install crun",
            required=runc_path is None,
        ),
        fix="apt-get install --reinstall crun",
        needed=True,  # installed, it is the one the container tier runs, broken or not
    )  # fmt: skip
    runc, _ = _runtime(
        "runc",
        settings.runc_path,
        host,
        missing=Finding(
            name="runc",
            status="ok" if crun_ok else "fail",
            detail=f"{settings.runc_path} is not installed"
            + (
                "; not needed: crun runs the container tier" if crun_ok else " (nor a working crun)"
            ),
            fix="" if crun_ok else "apt-get install crun",
            required=not crun_ok,
        ),
        fix="apt-get install --reinstall runc",
        needed=not crun_ok,
    )
    gvisor_default = settings.default_isolation == "gvisor"
    runsc, _ = _runtime(
        "runsc",
        settings.runsc_path,
        host,
        missing=Finding(
            name="runsc",
            status="fail" if gvisor_default else "warn",
            detail=f"{settings.runsc_path} is not installed; runs asking for the gvisor "
            "tier are refused"
            + (" (and it is the default tier: SANDTREE_DEFAULT_ISOLATION)" if gvisor_default
               else ""),
            fix="apt-get install runsc",
            required=gvisor_default,
        ),
        fix="apt-get install --reinstall runsc",
        needed=gvisor_default,
    )  # fmt: skip
    return [crun, runc, runsc]


def _tool_missing(name: str, binary: str, package: str) -> Finding:
    return Finding(
        name=name,
        status="warn",
        detail=f"{binary} is not installed; runs with networking.enabled are refused",
        fix=f"apt-get install {package}",
        required=False,
    )


def _tool_unreadable(name: str, argv: str, why: str, package: str) -> Finding:
    return Finding(
        name=name,
        status="warn",
        detail=f"`{argv}` said nothing this check understands ({why})",
        fix=f"apt-get install --reinstall {package}",
        required=False,
    )


def check_iptables(host: HostView) -> Finding:
    path = _which("iptables", host)
    if path is None:
        return _tool_missing("iptables", "iptables", "iptables")
    output, why = _version_output(path, ["--version"])
    version, backend = iptables_version(output) if output is not None else ("", "unknown")
    if not version:
        return _tool_unreadable("iptables", "iptables --version", why or repr(output), "iptables")
    return Finding(
        name="iptables",
        status="ok",
        detail=f"iptables {version}, {backend} backend ({path})",
        required=False,
    )


def check_iproute2(host: HostView) -> Finding:
    path = _which("ip", host)
    if path is None:
        return _tool_missing("iproute2", "ip", "iproute2")
    output, why = _version_output(path, ["-V"])
    version = parse_iproute2_version(output) if output is not None else None
    if version is None:
        return _tool_unreadable("iproute2", "ip -V", why or repr(output), "iproute2")
    return Finding(
        name="iproute2", status="ok", detail=f"iproute2 {version} ({path})", required=False
    )


def network_checks(host: HostView) -> list[Finding]:
    """iptables (and which backend) and iproute2: without them, runs that ask for networking
    are refused; every other run works."""
    return [check_iptables(host), check_iproute2(host)]
