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

One pool per prefix per host, and one prefix per data dir (``NetworkPool.for_data_dir``,
see ``_netident``): ``cleanup_stale`` and ``teardown`` remove only what carries this pool's
prefix, so a second server on the host never touches the first one's firewall.

The policy is checked before every lease (``check_policy``: one ``iptables-save``, ~2 ms):
chains flushed or deleted by another process, or a foreign rule put before our jumps, are
re-installed before a sandbox gets a network, or the lease is refused.

Host tool output is read through ``_toolout`` (what iproute2 and iptables print differs
between versions and kernels), and the rules go to one iptables family, the host's
``iptables`` alternative unless told otherwise (``_firewall``: legacy or nft backend, and a
warning when the other backend holds rules too). ``_netpolicy`` installs and checks the
chains.

Each lease also gets a sysfs mounted from inside its netns (``nsenter --net``, by the
server, which owns that netns): the sandbox's ``/sys/class/net`` then lists ``lo`` and
``eth0`` only, not the host's interfaces (a sandbox cannot mount sysfs for a netns its user
namespace does not own, and the host's /sys shows the host's netns).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import logging
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandtree.engine.runtime import _firewall
from sandtree.engine.runtime._netident import HostNetworks, group_of, pool_identity
from sandtree.engine.runtime._netpolicy import BLOCKED as _BLOCKED, PoolFirewall, run_tool as _run
from sandtree.engine.runtime._toolout import addresses, default_route_devices
from sandtree.errors import RuntimeUnavailableError

__all__ = ["NetworkLease", "NetworkPool"]

_NETNS_DIR = Path("/run/netns")
_STATE_ROOT = Path("/run/sandtree-net")
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_SYS_NET = Path("/sys/class/net")
_PROC_NET = Path("/proc/sys/net")
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
_STATS = ("bytes", "packets", "errors", "dropped")
_EVENT_STATS = ("bytes", "packets", "errs", "drop")

logger = logging.getLogger(__name__)


def _libc_umount2(target: str) -> int:
    return int(_libc.umount2(target.encode(), _MNT_DETACH))


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
    sysfs: str | None = None
    """A read-only sysfs of this netns, to bind at the sandbox's ``/sys``."""

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
        owner: str | None = None,
        state_dir: Path | None = None,
        iptables: str = "iptables",
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
        self.group = group_of(prefix)
        #: Marks our chains on the host as this data dir's (see ``_netident``).
        self.owner = owner
        #: The pool's iptables chains, in the family ``iptables`` names (``_firewall``).
        self.firewall = PoolFirewall(
            prefix=prefix, subnet=self.subnet, group=self.group, owner=owner, iptables=iptables
        )
        self.chains = self.firewall.chains
        self.state_dir = state_dir if state_dir is not None else _STATE_ROOT / prefix
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

    @classmethod
    def for_data_dir(
        cls,
        data_dir: Path,
        *,
        pool_size: int = 4,
        allow_private_nameservers: bool = True,
        resolv_conf: str = "/etc/resolv.conf",
        iptables: str = "iptables",
    ) -> NetworkPool:
        """The pool of one data dir: its own prefix, subnet and owner mark, chosen on the
        first start and recorded in the data dir. Hold the data dir's lock when calling.

        Raises:
            RuntimeUnavailableError: no free prefix and subnet (the message says why).
        """
        host = HostNetworks.scan(_run([_firewall.tool(iptables, "-save")]), resolv_conf)
        try:
            ident = pool_identity(data_dir, host)
        except RuntimeError as e:
            raise RuntimeUnavailableError(f"sandbox networking: {e}") from e
        return cls(
            prefix=ident.prefix,
            subnet=ident.subnet,
            owner=ident.owner,
            pool_size=pool_size,
            allow_private_nameservers=allow_private_nameservers,
            resolv_conf=resolv_conf,
            iptables=iptables,
        )

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
        self.firewall.install(exceptions)

    def check_policy(self) -> None:
        """Verify our chains and jumps are as ``setup`` left them; re-install them if
        another process changed them (logged), and raise if that does not hold either.

        Costs one ``iptables-save`` (~2 ms here) when nothing changed.

        Raises:
            RuntimeUnavailableError: the policy cannot be put back.
        """
        if self.firewall.policy is None:
            raise RuntimeUnavailableError("sandbox networking: the pool was not set up")
        if self.firewall.intact():
            return
        logger.warning(
            "the iptables policy of network pool %s was changed by another process; "
            "re-installing it before handing out a network",
            self.prefix,
        )
        self.setup()
        if not self.firewall.intact():
            raise RuntimeUnavailableError(
                f"sandbox networking: the firewall of pool {self.prefix} keeps being changed "
                "by another process; networked runs are refused until it stops"
            )

    def teardown(self) -> None:
        """Remove every namespace, veth, jump and chain of this prefix (tests, shutdown)."""
        self.cleanup_stale()
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # the per-lease sysfs mount points are gone with them
        self.firewall.remove()
        # Put ip_forward back only if we turned it on and no other pool still needs it.
        if self._ip_forward_before is not None and not self.firewall.any_pool_left():
            _write_sysctl(_PROC_NET / "ipv4" / "ip_forward", self._ip_forward_before)
            self._ip_forward_before = None

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
        for dev in default_route_devices(_run(["ip", "-j", "-4", "route", "show", "default"])):
            try:
                return int((_SYS_NET / dev / "mtu").read_text())
            except (OSError, ValueError):
                continue
        return 1500

    @staticmethod
    def _host_addresses() -> list[str]:
        return [local for local, _ in addresses(_run(["ip", "-j", "addr", "show"]))]

    # -- namespaces ----------------------------------------------------------------------

    def lease(self) -> NetworkLease:
        """Hand out a prepared namespace (from the warm pool, else created now), after
        checking the firewall policy still stands (``check_policy``)."""
        self.check_policy()
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
            self._unmount_sysfs(lease.name)
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
        # Names from sysfs, not `ip -j link show type veth`: iproute2 6.1 prints one empty
        # object per link that is not a veth (`[{},{}]`), which crashed this on Debian 12.
        ifs = sorted(n for n in os.listdir(_SYS_NET) if if_re.fullmatch(n))
        with self._lock:
            self._pool.clear()
            self._used.clear()
        if self.state_dir.is_dir():
            for entry in os.listdir(self.state_dir):
                if ns_re.fullmatch(entry):
                    self._unmount_sysfs(entry)
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
            sysfs = self._mount_sysfs(name)
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
            sysfs=sysfs,
        )

    def _mount_sysfs(self, name: str) -> str | None:
        """A read-only sysfs of netns ``name`` (its /sys/class/net: lo and eth0), mounted
        by a process that joined only that netns, so the mount is in our mount namespace;
        None where nsenter or mount is missing (the sandbox then gets the host's /sys)."""
        if shutil.which("nsenter") is None or shutil.which("mount") is None:
            return None
        target = self.state_dir / name / "sys"
        target.mkdir(parents=True, exist_ok=True)
        _run(["nsenter", f"--net={_NETNS_DIR / name}", "mount", "-t", "sysfs", "-o",
              "ro,nosuid,nodev,noexec", "sysfs", str(target)])  # fmt: skip
        return str(target)

    def _unmount_sysfs(self, name: str) -> None:
        target = self.state_dir / name / "sys"
        while os.path.ismount(target):
            if _libc_umount2(str(target)) != 0:
                break
        for path in (target, target.parent):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                break
