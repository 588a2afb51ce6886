"""Which iptables backend a network pool's rules go to, and whether the other one is in use.

The pool runs ``iptables``, ``iptables-save`` and ``iptables-restore`` of one family:
by default the host's alternative (``iptables``: Debian 12, Ubuntu 22.04+ and RHEL 9 point it
at ``iptables-nft``), or one named explicitly (``iptables-nft``, ``iptables-legacy``). The
rules are the same text on both backends and ``iptables-save`` prints them back the same
way (``tests/engine/runtime/fixtures`` holds both outputs).

Both backends can hold rules in one network namespace at once (one tool on
``iptables-legacy``, another on ``iptables-nft``). The kernel then passes each packet through
the base chains of both, and the packet is dropped if either drops it. So:

* the pool's DROP rules hold whatever the other backend says: an ACCEPT there does not skip
  our chains (``test_firewall_backends`` proves it);
* but the other backend's own DROP rules or policies (a FORWARD policy DROP, say) can stop
  sandbox traffic that ours lets through, and ``check_policy`` only sees our backend.

``detect`` reports that case and ``NetworkPool.setup`` logs it as a warning: it is the
operator's to fix (put every tool on one backend), not a reason to refuse networking.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from sandtree.engine.runtime._toolout import busy_tables, iptables_version

__all__ = ["FirewallBackend", "detect", "tool"]

#: Legacy (x_tables) tables of the caller's netns; absent while ip_tables is not loaded.
_LEGACY_NAMES = Path("/proc/net/ip_tables_names")
_COMMANDS = ("iptables", "iptables-nft", "iptables-legacy")


def tool(command: str, suffix: str = "") -> str:
    """``iptables`` + ``-save``/``-restore`` of one family: ``iptables-legacy`` gives
    ``iptables-legacy-save``, the alternative ``iptables`` gives ``iptables-save``.

    Raises:
        ValueError: not an iptables family this pool knows (the name goes to argv).
    """
    if command not in _COMMANDS:
        raise ValueError(f"iptables must be one of {', '.join(_COMMANDS)}, not {command!r}")
    return command + suffix


@dataclasses.dataclass(frozen=True)
class FirewallBackend:
    """The backend behind one iptables command, as found on this host."""

    command: str
    version: str
    """e.g. ``1.8.9``; ``""`` when ``--version`` printed nothing we recognise."""
    kind: str
    """``nf_tables``, ``legacy``, ``unknown``, or ``missing`` (the command is not installed)."""
    other_tables: tuple[str, ...] = ()
    """The other backend's tables holding rules or a non-ACCEPT policy in this netns."""

    def warning(self) -> str | None:
        """What the operator should know when both backends are in use, else None."""
        if not self.other_tables:
            return None
        other = "iptables-legacy" if self.kind == "nf_tables" else "iptables-nft"
        return (
            f"sandbox networking uses {self.command} ({self.kind}), but {other} holds rules "
            f"too ({'; '.join(self.other_tables)}): both apply to every packet, so a DROP "
            f"there can block sandbox traffic; put all firewall tools on one backend "
            f"(update-alternatives --config iptables)"
        )


def detect(command: str = "iptables") -> FirewallBackend:
    """Ask ``command --version`` for its backend, then look at the other backend's rules."""
    try:
        done = subprocess.run(
            [tool(command), "--version"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return FirewallBackend(command, "", "missing")
    version, kind = iptables_version(done.stdout + done.stderr)
    if command == "iptables-nft" and kind == "unknown":
        kind = "nf_tables"
    elif command == "iptables-legacy" and kind == "unknown":
        kind = "legacy"
    return FirewallBackend(command, version, kind, tuple(_other_backend(kind)))


def _other_backend(kind: str) -> list[str]:
    if kind == "nf_tables":
        # Cheap first: no legacy table exists until something loaded one.
        try:
            if not _LEGACY_NAMES.read_text().split():
                return []
        except OSError:
            return []
        save = "iptables-legacy-save"
    elif kind == "legacy":
        save = "iptables-nft-save"
    else:
        return []
    if shutil.which(save) is None:
        return []
    try:
        done = subprocess.run([save], capture_output=True, text=True, check=False)
    except OSError:
        return []
    return busy_tables(done.stdout) if done.returncode == 0 else []
