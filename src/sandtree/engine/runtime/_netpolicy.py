"""The iptables policy of one network pool: its chains, the jumps into them, and the check
that both still stand (see ``_network`` for what the rules allow and why).

Everything goes through one iptables family (``_firewall``), and what ``iptables-save``
prints is read through ``_toolout``, so the nft and the legacy backend are handled alike.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading
from collections.abc import Sequence

from sandtree.engine.runtime import _firewall
from sandtree.engine.runtime._netident import owner_comment
from sandtree.engine.runtime._toolout import saved_tables
from sandtree.errors import RuntimeUnavailableError

__all__ = ["BLOCKED", "PoolFirewall", "run_tool", "tool_ok"]

#: Destinations no sandbox may reach: private, loopback, link-local, CGNAT, multicast and
#: reserved ranges (the pool's own subnet is added per pool).
BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)

logger = logging.getLogger(__name__)


def run_tool(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a host tool; any failure means the host cannot provide networking."""
    try:
        done = subprocess.run(list(argv), input=stdin, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeUnavailableError(
            f"sandbox networking needs `{argv[0]}` (iproute2/iptables) on the host: {e}"
        ) from e
    except subprocess.CalledProcessError as e:
        raise RuntimeUnavailableError(
            f"sandbox networking: `{' '.join(argv)}` failed (exit {e.returncode}): "
            f"{(e.stderr or '').strip()}"
        ) from e
    return done.stdout


def tool_ok(argv: Sequence[str]) -> bool:
    """True if the command exits 0 (used for ``iptables -C`` probes)."""
    try:
        return subprocess.run(list(argv), capture_output=True).returncode == 0
    except FileNotFoundError as e:
        raise RuntimeUnavailableError(f"sandbox networking needs `{argv[0]}`: {e}") from e


class PoolFirewall:
    """Installs, checks and removes the chains ``SANDTREE-<prefix>-{IN,FWD,NAT}``."""

    def __init__(
        self,
        *,
        prefix: str,
        subnet: ipaddress.IPv4Network,
        group: int,
        owner: str | None,
        iptables: str = "iptables",
    ) -> None:
        self.prefix = prefix
        self.subnet = subnet
        self.group = group
        self.owner = owner
        #: The iptables family the rules go to: the host's alternative by default, so they
        #: land where the host's other tools look.
        self.iptables = _firewall.tool(iptables)
        self.chains = {k: f"SANDTREE-{prefix}-{k}" for k in ("IN", "FWD", "NAT")}
        #: The backend behind ``iptables``, found on the first ``install``.
        self.backend: _firewall.FirewallBackend | None = None
        #: What ``iptables-save`` showed of our rules after the last ``install``.
        self.policy: tuple[str, ...] | None = None
        self._lock = threading.Lock()

    def save(self) -> str:
        return run_tool([_firewall.tool(self.iptables, "-save")])

    def install(self, dns_exceptions: Sequence[str]) -> None:
        """Create or rebuild our chains and put our jumps first; safe to call again."""
        if self.backend is None:
            self.backend = _firewall.detect(self.iptables)
            if (warning := self.backend.warning()) is not None:
                logger.warning("%s", warning)
        ipt = [self.iptables, "-w"]
        with self._lock:
            run_tool(
                [_firewall.tool(self.iptables, "-restore"), "-w", "--noflush"],
                stdin=self._script(dns_exceptions),
            )
            saved = self.save()
            for table, hook, chain in self.jumps():
                if self.jump_in_place(saved, table, hook, chain):
                    continue
                while tool_ok([*ipt, "-t", table, "-C", hook, "-j", chain]):
                    run_tool([*ipt, "-t", table, "-D", hook, "-j", chain])
                run_tool([*ipt, "-t", table, "-I", hook, "1", "-j", chain])
            self.policy = self.policy_of(self.save())

    def _script(self, dns_exceptions: Sequence[str]) -> str:
        c, g, net = self.chains, f"--src-group {self.group}", str(self.subnet)
        dst = f"-m devgroup --dst-group {self.group}"
        fwd_rules = [
            f"{dst} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            f"{dst} -j DROP",
            f"-m devgroup {g} ! -s {net} -j DROP",
            *(f"-m devgroup {g} -d {ns} -p {p} --dport 53 -j ACCEPT" for ns in dns_exceptions
              for p in ("udp", "tcp")),
            *(f"-m devgroup {g} -d {r} -j DROP" for r in (*BLOCKED, net)),
            f"-m devgroup {g} -j ACCEPT",
        ]  # fmt: skip
        # iptables-restore --noflush creates-or-flushes only the chains it declares, in one
        # transaction: re-running setup rebuilds our chains and never touches other rules.
        return "\n".join(
            [
                "*filter",
                f":{c['IN']} - [0:0]",
                f":{c['FWD']} - [0:0]",
                *(
                    [f'-A {c["IN"]} -m comment --comment "{owner_comment(self.owner)}"']
                    if self.owner
                    else []
                ),
                f"-A {c['IN']} -m devgroup {g} -j DROP",
                *(f"-A {c['FWD']} {r}" for r in fwd_rules),
                "COMMIT",
                "*nat",
                f":{c['NAT']} - [0:0]",
                f"-A {c['NAT']} -s {net} -m devgroup ! --dst-group {self.group} -j MASQUERADE",
                "COMMIT",
                "",
            ]
        )

    def intact(self) -> bool:
        """True when ``iptables-save`` shows our rules as the last ``install`` left them
        (one ``iptables-save``, ~2 ms here)."""
        return self.policy is not None and self.policy_of(self.save()) == self.policy

    def policy_of(self, saved: str) -> tuple[str, ...]:
        """What must hold of ``iptables-save`` output: our chains' rules, in order, and each
        jump reached before any rule of another tool."""
        tables = saved_tables(saved)
        # By table name: the backends save the tables in different orders (nft: filter
        # first, legacy: nat first).
        mine = tuple(
            line
            for table in sorted(tables)
            for line in tables[table]
            if line.startswith(f"-A SANDTREE-{self.prefix}-")
        )
        jumps = tuple(
            f"{hook}:{self.jump_in_place(saved, table, hook, chain)}"
            for table, hook, chain in self.jumps()
        )
        return mine + jumps

    @staticmethod
    def jump_in_place(saved: str, table: str, hook: str, chain: str) -> bool:
        """True when ``hook`` jumps to ``chain`` before any rule that is not a jump into a
        sandtree chain (other pools only match their own devgroups, so their order does not
        matter; another tool's ACCEPT before ours would bypass the policy)."""
        for line in saved_tables(saved).get(table, []):
            if not line.startswith(f"-A {hook} "):
                continue
            if line == f"-A {hook} -j {chain}":
                return True
            target = line.rsplit(" -j ", 1)[-1]
            if table == "nat":
                continue  # NAT order does not decide what a sandbox may reach
            if not (target.startswith("SANDTREE-") and line == f"-A {hook} -j {target}"):
                return False
        return False

    def remove(self) -> None:
        """Delete our jumps and chains (whatever is left of them)."""
        self.policy = None
        ipt = [self.iptables, "-w"]
        for table, hook, chain in self.jumps():
            while tool_ok([*ipt, "-t", table, "-C", hook, "-j", chain]):
                run_tool([*ipt, "-t", table, "-D", hook, "-j", chain])
            if tool_ok([*ipt, "-t", table, "-n", "-L", chain]):
                run_tool([*ipt, "-t", table, "-F", chain])
                run_tool([*ipt, "-t", table, "-X", chain])

    def any_pool_left(self) -> bool:
        """True while any sandtree pool (ours or another's) has chains in the filter table."""
        return "SANDTREE-" in run_tool([self.iptables, "-w", "-S"])

    def jumps(self) -> list[tuple[str, str, str]]:
        c = self.chains
        return [
            ("filter", "INPUT", c["IN"]),
            ("filter", "FORWARD", c["FWD"]),
            ("nat", "POSTROUTING", c["NAT"]),
        ]
