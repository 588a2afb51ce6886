"""Outbound-only networking for sandboxes: a pool of prepared network namespaces.

Each lease is a fresh netns at ``/run/netns/<prefix>-<n>`` joined by the OCI runtime
(``linux.namespaces: [{"type": "network", "path": lease.netns_path}]``). A veth pair links it
to the host: ``<prefix>h<n>`` on the host holds the gateway of a /30 cut from ``subnet`` and
the sandbox end is ``eth0``, with the other address of the /30 and a default route.

Policy (iptables, own chains so teardown never touches rules of other tools):

* every host veth is put in one interface *group* derived from the prefix, and all rules
  match ``-m devgroup``; a name wildcard such as ``<prefix>h+`` could also match host
  interfaces (prefix ``et`` gives ``eth+``) or another pool's veths;
* ``SANDTREE-<prefix>-IN`` (from INPUT) drops everything a sandbox sends to the host itself,
  whatever address it targets: the gateway, eth0's address, the address of another veth;
* ``SANDTREE-<prefix>-FWD`` (first rule of FORWARD, because the host policy may be ACCEPT)
  lets replies back in, refuses new connections into sandboxes (outbound only, which also
  separates sandboxes from each other), drops spoofed sources, drops private, loopback,
  link-local, CGNAT, multicast and reserved destinations plus the pool's own subnet, and
  accepts the rest;
* ``SANDTREE-<prefix>-NAT`` (from nat POSTROUTING) masquerades what leaves the pool.

IPv6 is off on both ends (no address, ``disable_ipv6`` on the host end), so link-local IPv6
cannot be used to reach host services bound to ``::``.

DNS: sandboxes get the host's resolv.conf nameservers, minus loopback ones (127.0.0.53 of
systemd-resolved only exists in the host's netns) and minus the host's own addresses (INPUT
is closed). A nameserver inside a dropped range gets a narrow exception (udp/tcp port 53 to
that one address) unless ``allow_private_nameservers=False``; then it is left out.

One pool per prefix per host: ``cleanup_stale`` removes everything carrying the prefix.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import subprocess
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandtree.errors import RuntimeUnavailableError

__all__ = ["NetworkLease", "NetworkPool"]

_NETNS_DIR = Path("/run/netns")
_SYS_NET = Path("/sys/class/net")
_PROC_NET = Path("/proc/sys/net")
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
_BLOCKED = (
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
_STATS = ("bytes", "packets", "errors", "dropped")
_EVENT_STATS = ("bytes", "packets", "errs", "drop")


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
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


def _ok(argv: Sequence[str]) -> bool:
    """True if the command exits 0 (used for ``iptables -C`` probes)."""
    try:
        return subprocess.run(list(argv), capture_output=True).returncode == 0
    except FileNotFoundError as e:
        raise RuntimeUnavailableError(f"sandbox networking needs `{argv[0]}`: {e}") from e


def _write_sysctl(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise RuntimeUnavailableError(f"sandbox networking: cannot write {path}: {e}") from e


@dataclass(frozen=True)
class NetworkLease:
    """A prepared network namespace, owned by one sandbox run until ``release``."""

    name: str
    netns_path: str
    address: str
    """Sandbox address with prefix length, e.g. ``10.213.0.6/30``."""
    gateway: str
    nameservers: list[str]
    host_interface: str
    index: int = field(repr=False)

    def counters(self) -> list[dict[str, int | str]]:
        """Traffic counters of the sandbox's ``eth0`` (one dict per interface).

        Read from the host end of the veth, with directions swapped (what the host end
        received, the sandbox sent): no subprocess, and still right if the sandbox renamed
        or reconfigured its end.
        """
        stats = _SYS_NET / self.host_interface / "statistics"
        try:
            raw = {
                f"{d}_{s}": int((stats / f"{d}_{s}").read_text())
                for d in ("rx", "tx")
                for s in _STATS
            }
        except OSError:
            return []
        out: dict[str, int | str] = {"name": "eth0"}
        for mine, host in (("rx", "tx"), ("tx", "rx")):
            for event_name, stat in zip(_EVENT_STATS, _STATS, strict=True):
                out[f"{mine}_{event_name}"] = raw[f"{host}_{stat}"]
        return [out]


class NetworkPool:
    """Creates, hands out and destroys outbound-only network namespaces.

    All methods block (they run ``ip``/``iptables``); async callers wrap them in
    ``anyio.to_thread.run_sync``. They are safe to call from several threads.
    """

    def __init__(
        self,
        *,
        subnet: str = "10.213.0.0/16",
        prefix: str = "st",
        pool_size: int = 4,
        allow_private_nameservers: bool = True,
        resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"prefix must match {_PREFIX_RE.pattern} (interface names are short)")
        self.subnet = ipaddress.IPv4Network(subnet)
        if self.subnet.prefixlen > 30:
            raise ValueError("subnet must hold at least one /30")
        self.prefix = prefix
        self.pool_size = pool_size
        self.allow_private_nameservers = allow_private_nameservers
        self.resolv_conf = resolv_conf
        # A stable non-zero group per prefix, so a restarted process matches its old veths.
        self.group = (zlib.crc32(f"sandtree:{prefix}".encode()) & 0x7FFFFFFF) | 1
        self.chains = {k: f"SANDTREE-{prefix}-{k}" for k in ("IN", "FWD", "NAT")}
        self._capacity = self.subnet.num_addresses // 4
        # Round robin instead of lowest-free: an address is reused as late as possible, so
        # conntrack entries of a finished run have expired before another run gets its IP.
        self._next = itertools.count()
        self._used: set[int] = set()
        self._pool: list[NetworkLease] = []
        self._lock = threading.Lock()
        self._nameservers: list[str] | None = None
        self._mtu: int | None = None
        self._ip_forward_before: str | None = None

    # -- host policy ---------------------------------------------------------------------

    def setup(self) -> None:
        """Enable forwarding and install the iptables policy; safe to call again."""
        fwd = _PROC_NET / "ipv4" / "ip_forward"
        before = fwd.read_text().strip()
        if before != "1":
            self._ip_forward_before = before
            _write_sysctl(fwd, "1")
        nameservers, exceptions = self._resolvers()
        self._nameservers = nameservers
        self._mtu = self._uplink_mtu()
        c, g, net = self.chains, f"--src-group {self.group}", str(self.subnet)
        dst = f"-m devgroup --dst-group {self.group}"
        fwd_rules = [
            f"{dst} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            f"{dst} -j DROP",
            f"-m devgroup {g} ! -s {net} -j DROP",
            *(f"-m devgroup {g} -d {ns} -p {p} --dport 53 -j ACCEPT" for ns in exceptions
              for p in ("udp", "tcp")),
            *(f"-m devgroup {g} -d {r} -j DROP" for r in (*_BLOCKED, net)),
            f"-m devgroup {g} -j ACCEPT",
        ]  # fmt: skip
        # iptables-restore --noflush creates-or-flushes only the chains it declares, in one
        # transaction: re-running setup rebuilds our chains and never touches other rules.
        script = "\n".join(
            [
                "*filter",
                f":{c['IN']} - [0:0]",
                f":{c['FWD']} - [0:0]",
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
        _run(["iptables-restore", "-w", "--noflush"], stdin=script)
        for table, hook, chain in self._jumps():
            if not _ok(["iptables", "-w", "-t", table, "-C", hook, "-j", chain]):
                _run(["iptables", "-w", "-t", table, "-I", hook, "1", "-j", chain])

    def teardown(self) -> None:
        """Remove every namespace, veth, jump and chain of this prefix (tests, shutdown)."""
        self.cleanup_stale()
        for table, hook, chain in self._jumps():
            while _ok(["iptables", "-w", "-t", table, "-C", hook, "-j", chain]):
                _run(["iptables", "-w", "-t", table, "-D", hook, "-j", chain])
            if _ok(["iptables", "-w", "-t", table, "-n", "-L", chain]):
                _run(["iptables", "-w", "-t", table, "-F", chain])
                _run(["iptables", "-w", "-t", table, "-X", chain])
        # Put ip_forward back only if we turned it on and no other pool still needs it.
        if self._ip_forward_before is not None and "SANDTREE-" not in _run(["iptables", "-S"]):
            _write_sysctl(_PROC_NET / "ipv4" / "ip_forward", self._ip_forward_before)
            self._ip_forward_before = None

    def _jumps(self) -> list[tuple[str, str, str]]:
        c = self.chains
        return [
            ("filter", "INPUT", c["IN"]),
            ("filter", "FORWARD", c["FWD"]),
            ("nat", "POSTROUTING", c["NAT"]),
        ]

    def _resolvers(self) -> tuple[list[str], list[str]]:
        """(nameservers to give sandboxes, those needing a FORWARD exception)."""
        try:
            lines = Path(self.resolv_conf).read_text().splitlines()
        except OSError:
            return [], []
        local = set(self._host_addresses())
        blocked = [ipaddress.IPv4Network(r) for r in (*_BLOCKED, str(self.subnet))]
        keep: list[str] = []
        exceptions: list[str] = []
        for line in lines:
            parts = line.split()
            if len(parts) < 2 or parts[0] != "nameserver":
                continue
            try:
                addr = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            # Sandboxes have no IPv6; the host's own addresses are behind the closed INPUT.
            if addr.version != 4 or addr.is_loopback or str(addr) in local or addr in self.subnet:
                continue
            if any(addr in b for b in blocked):
                if not self.allow_private_nameservers:
                    continue
                exceptions.append(str(addr))
            keep.append(str(addr))
        return keep, exceptions

    @staticmethod
    def _uplink_mtu() -> int:
        """MTU of the default route's interface (1400 on some VMs): a 1500-byte veth behind
        it would rely on ICMP "fragmentation needed", which many paths filter."""
        routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "default"]) or "[]")
        for route in routes:
            try:
                return int((_SYS_NET / route["dev"] / "mtu").read_text())
            except (KeyError, OSError, ValueError):
                continue
        return 1500

    @staticmethod
    def _host_addresses() -> list[str]:
        return [
            a["local"]
            for link in json.loads(_run(["ip", "-j", "addr", "show"]) or "[]")
            for a in link.get("addr_info", [])
            if "local" in a
        ]

    # -- namespaces ----------------------------------------------------------------------

    def lease(self) -> NetworkLease:
        """Hand out a prepared namespace (from the warm pool, else created now)."""
        with self._lock:
            if self._pool:
                return self._pool.pop()
        return self._create()

    def refill(self) -> None:
        """Create namespaces until the warm pool holds ``pool_size`` of them."""
        while True:
            with self._lock:
                if len(self._pool) >= self.pool_size:
                    return
            lease = self._create()
            with self._lock:
                self._pool.append(lease)

    def release(self, lease: NetworkLease) -> None:
        """Destroy a lease's namespace and veth; namespaces are never handed out twice.

        Call it after the sandbox's processes are gone. It takes 15-50 ms (deleting a netdev
        waits for an RCU grace period), so callers may run it after replying.
        """
        try:
            self._delete([lease.host_interface], [lease.name])
        finally:
            with self._lock:
                self._used.discard(lease.index)

    def cleanup_stale(self) -> None:
        """Remove every namespace and veth of this prefix, e.g. left by a crashed process."""
        ns_re = re.compile(rf"{re.escape(self.prefix)}-\d+")
        if_re = re.compile(rf"{re.escape(self.prefix)}h\d+")
        names = sorted(n for n in os.listdir(_NETNS_DIR) if ns_re.fullmatch(n)) if (
            _NETNS_DIR.is_dir()
        ) else []  # fmt: skip
        links = json.loads(_run(["ip", "-j", "link", "show", "type", "veth"]) or "[]")
        ifs = sorted(link["ifname"] for link in links if if_re.fullmatch(link["ifname"]))
        with self._lock:
            self._pool.clear()
            self._used.clear()
        self._delete(ifs, names)

    def _delete(self, interfaces: Sequence[str], namespaces: Sequence[str]) -> None:
        # Deleting the host end removes both ends at once; `netns del` alone would leave the
        # veth to the kernel's asynchronous netns cleanup (or keep it while a process holds
        # the namespace). -force: one leftover already gone must not stop the rest.
        cmds = [f"link del {i}" for i in interfaces] + [f"netns del {n}" for n in namespaces]
        if cmds:
            try:
                _run(["ip", "-force", "-batch", "-"], stdin="\n".join(cmds) + "\n")
            except RuntimeUnavailableError:
                gone = [i for i in interfaces if (_SYS_NET / i).exists()]
                gone += [n for n in namespaces if (_NETNS_DIR / n).exists()]
                if gone:
                    raise

    def _allocate(self) -> int:
        with self._lock:
            for _ in range(self._capacity):
                i = next(self._next) % self._capacity
                # Skip slots whose veth or netns still exists (left by a crash, or held).
                if i not in self._used and not (
                    (_SYS_NET / f"{self.prefix}h{i}").exists()
                    or (_NETNS_DIR / f"{self.prefix}-{i}").exists()
                ):
                    self._used.add(i)
                    return i
        raise RuntimeUnavailableError(
            f"sandbox networking: all {self._capacity} addresses of {self.subnet} are in use"
        )

    def _create(self) -> NetworkLease:
        if self._nameservers is None:
            self._nameservers = self._resolvers()[0]
        if self._mtu is None:
            self._mtu = self._uplink_mtu()
        i = self._allocate()
        base = self.subnet.network_address + 4 * i
        gw, addr = str(base + 1), str(base + 2)
        name, host_if = f"{self.prefix}-{i}", f"{self.prefix}h{i}"
        try:
            # One ip process for the host side (`netns add` in a batch does not move ip
            # itself into the new netns), one for the inside; `ip netns exec` is avoided.
            _run(
                ["ip", "-batch", "-"],
                stdin=f"netns add {name}\n"
                f"link add {host_if} mtu {self._mtu} group {self.group} type veth"
                f" peer name eth0 mtu {self._mtu} netns {name}\n"
                f"link set {host_if} addrgenmode none\n"
                f"addr add {gw}/30 dev {host_if}\n"
                f"link set {host_if} up\n",
            )
            # Set while the sandbox end is still down, so nothing has been sent yet: no IPv6
            # path to the host, and a strict reverse-path filter so that a sandbox cannot
            # borrow another sandbox's address.
            _write_sysctl(_PROC_NET / "ipv6" / "conf" / host_if / "disable_ipv6", "1")
            _write_sysctl(_PROC_NET / "ipv4" / "conf" / host_if / "rp_filter", "1")
            _run(
                ["ip", "-n", name, "-batch", "-"],
                stdin="link set lo up\n"
                "link set eth0 addrgenmode none\n"
                f"addr add {addr}/30 dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {gw} dev eth0 onlink\n",
            )
        except BaseException:
            self.release(NetworkLease(name, "", "", "", [], host_if, i))
            raise
        return NetworkLease(
            name=name,
            netns_path=str(_NETNS_DIR / name),
            address=f"{addr}/30",
            gateway=gw,
            nameservers=list(self._nameservers),
            host_interface=host_if,
            index=i,
        )
