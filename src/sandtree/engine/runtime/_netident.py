"""Which network names and addresses belong to one data dir.

Every host object of a pool carries its prefix: netns ``<prefix>-<n>``, veths
``<prefix>h<n>``, chains ``SANDTREE-<prefix>-*``, and its devgroup is derived from it. Two
servers sharing one prefix would take each other's objects for their own (one stopping
removes the other's firewall), so each data dir gets its own, chosen on its first start and
recorded in ``<data dir>/network.json``:

* the *owner*: a random token made once; the pool's INPUT chain carries it as a comment, so
  chains found on the host can be told apart as this data dir's or another's;
* the *prefix* ``s`` + 5 hex digits and a /20 *subnet* of ``10.224.0.0/12`` (1,024 leases),
  both derived from the owner (candidate 0, 1, … until one is free).

A candidate is free when no other pool's chains use its prefix, devgroup or an overlapping
subnet, no interface or netns of the host has its names (unless the record says they are
ours: a crash leaves them), and its subnet overlaps no address, route or nameserver of the
host. A recorded identity that another pool took while this server was stopped is given up
for the next free one. The data dir's lock (``_lock``) makes the choice race-free within one
data dir; across data dirs the chains are the claim, installed right after the choice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import secrets
import subprocess
import zlib
from collections.abc import Iterable
from pathlib import Path

from sandtree.engine.runtime._toolout import addresses, routes, saved_tables

__all__ = ["RECORD_FILE", "HostNetworks", "PoolIdentity", "group_of", "pool_identity", "pools_in"]

RECORD_FILE = "network.json"
_BASE = ipaddress.IPv4Network("10.224.0.0/12")
_BLOCK = 20
_CANDIDATES = 256
_SYS_NET = Path("/sys/class/net")
_NETNS_DIR = Path("/run/netns")
_CHAIN_RE = re.compile(r"SANDTREE-([a-z][a-z0-9]{0,7})-(IN|FWD|NAT)")
_OWNER_RE = re.compile(r'--comment "?sandtree owner ([0-9a-f]+)"?')
_GROUP_RE = re.compile(r"--(?:src|dst)-group (0x[0-9a-f]+|\d+)")
_SOURCE_RE = re.compile(r"(?:^| )-s (\d+\.\d+\.\d+\.\d+/\d+)")


def group_of(prefix: str) -> int:
    """The non-zero devgroup of a prefix (stable, so a restart matches its old veths)."""
    return (zlib.crc32(f"sandtree:{prefix}".encode()) & 0x7FFFFFFF) | 1


def owner_comment(owner: str) -> str:
    return f"sandtree owner {owner}"


@dataclasses.dataclass(frozen=True)
class PoolIdentity:
    """The names and addresses of one data dir's pool."""

    owner: str
    prefix: str
    subnet: str


@dataclasses.dataclass
class _OtherPool:
    owner: str | None = None
    subnets: set[ipaddress.IPv4Network] = dataclasses.field(default_factory=set)
    groups: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class HostNetworks:
    """What the host already uses: other pools (from iptables), links, netns, addresses."""

    pools: dict[str, _OtherPool]
    links: dict[str, int]
    """Interface name -> devgroup."""
    netns: set[str]
    networks: list[tuple[ipaddress.IPv4Network, str]]
    """(network, device) of every IPv4 route and address (a /32); device "" for nameservers."""

    @classmethod
    def scan(cls, iptables_save: str, resolv_conf: str = "/etc/resolv.conf") -> HostNetworks:
        return cls(
            pools=pools_in(iptables_save),
            links=_links(),
            netns=set(os.listdir(_NETNS_DIR)) if _NETNS_DIR.is_dir() else set(),
            networks=[*_addresses_and_routes(), *_nameservers(resolv_conf)],
        )

    def conflict(self, ident: PoolIdentity, *, recorded: bool) -> str | None:
        """Why ``ident`` cannot be used by its owner here, or None when it can."""
        net = ipaddress.IPv4Network(ident.subnet)
        group = group_of(ident.prefix)
        mine = re.compile(rf"{re.escape(ident.prefix)}(h\d+|-\d+)")
        for prefix, pool in self.pools.items():
            if pool.owner == ident.owner:
                continue
            if prefix == ident.prefix:
                return f"iptables chains SANDTREE-{prefix}-* belong to another pool"
            if group in pool.groups:
                return f"devgroup {group:#x} is used by the pool {prefix}"
            if any(net.overlaps(other) for other in pool.subnets):
                return f"{net} overlaps the subnet of the pool {prefix}"
        ours_left = recorded and self.pools.get(ident.prefix, _OtherPool()).owner in (
            None,
            ident.owner,
        )
        for name in [*self.links, *self.netns]:
            if mine.fullmatch(name) and not ours_left:
                return f"{name} exists on the host"
        for name, link_group in self.links.items():
            if link_group == group and not mine.fullmatch(name):
                return f"devgroup {group:#x} is used by {name}"
        for other, dev in self.networks:
            if mine.fullmatch(dev):
                continue  # the /30s of our own leftover veths
            # A broader route (a VPN's 10.0.0.0/8) loses to our /30s by longest prefix;
            # an address, a nameserver or a network inside our block would be shadowed.
            if net.overlaps(other) and other.prefixlen >= net.prefixlen:
                return f"{net} overlaps {other}" + (f" on {dev}" if dev else " (a nameserver)")
        return None


def pool_identity(data_dir: Path, host: HostNetworks) -> PoolIdentity:
    """The data dir's identity: the recorded one if still free, else the next free one
    (then recorded). Call with the data dir's lock held.

    Raises:
        RuntimeError: no candidate is free (the message says what was in the way).
    """
    record = data_dir / RECORD_FILE
    owner: str | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(record.read_text(encoding="utf-8"))
        owner = str(doc["owner"])
        recorded = PoolIdentity(owner=owner, prefix=str(doc["prefix"]), subnet=str(doc["subnet"]))
        if host.conflict(recorded, recorded=True) is None:
            return recorded
    if owner is None or not re.fullmatch(r"[0-9a-f]{16}", owner):
        owner = secrets.token_hex(8)
    reasons: list[str] = []
    for ident in _candidates(owner):
        reason = host.conflict(ident, recorded=False)
        if reason is None:
            _write_record(record, ident)
            return ident
        reasons.append(reason)
    raise RuntimeError(
        f"no free network prefix and subnet in {_BASE} for {data_dir} "
        f"({len(reasons)} tried; e.g. {reasons[0]})"
    )


def _candidates(owner: str) -> Iterable[PoolIdentity]:
    blocks = 1 << (_BLOCK - _BASE.prefixlen)
    for k in range(_CANDIDATES):
        digest = hashlib.sha256(f"{owner}:{k}".encode()).hexdigest()
        # Hex digits only after the "s": never an "h", so <prefix>h<n> stays unambiguous.
        prefix = "s" + digest[:5]
        block = int(digest[5:13], 16) % blocks
        subnet = ipaddress.IPv4Network(
            (int(_BASE.network_address) + (block << (32 - _BLOCK)), _BLOCK)
        )
        yield PoolIdentity(owner=owner, prefix=prefix, subnet=str(subnet))


def _write_record(path: Path, ident: PoolIdentity) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(ident), f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def pools_in(iptables_save: str) -> dict[str, _OtherPool]:
    """Every pool whose chains are on the host, from ``iptables-save`` output."""
    pools: dict[str, _OtherPool] = {}
    lines = [line for table in saved_tables(iptables_save).values() for line in table]
    for line in lines:
        if line.startswith(":"):
            chain = line[1:].split(" ", 1)[0]
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
        else:
            continue
        match = _CHAIN_RE.fullmatch(chain)
        if match is None:
            continue
        pool = pools.setdefault(match[1], _OtherPool())
        if (owner := _OWNER_RE.search(line)) is not None:
            pool.owner = owner[1]
        pool.groups.update(int(g, 0) for g in _GROUP_RE.findall(line))
        for source in _SOURCE_RE.findall(line):
            with contextlib.suppress(ValueError):
                pool.subnets.add(ipaddress.IPv4Network(source, strict=False))
    return pools


def _links() -> dict[str, int]:
    """Interfaces of this netns and their devgroups, from sysfs (no tool output to parse)."""
    links: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(_SYS_NET):
            try:
                links[name] = int((_SYS_NET / name / "netdev_group").read_text().strip())
            except (OSError, ValueError):
                links[name] = 0
    return links


def _addresses_and_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    found: list[tuple[ipaddress.IPv4Network, str]] = []
    for argv, read in ((["ip", "-j", "-4", "addr", "show"], addresses),
                       (["ip", "-j", "-4", "route", "show", "table", "all"], routes)):  # fmt: skip
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        # _toolout reads any iproute2 version's shape (6.1 prints {} for links that match
        # no filter) and skips what does not parse.
        for text, dev in read(out):
            _add(found, text, dev)
    return found


def _nameservers(resolv_conf: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    found: list[tuple[ipaddress.IPv4Network, str]] = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path(resolv_conf).read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                _add(found, parts[1], "")
    return found


def _add(found: list[tuple[ipaddress.IPv4Network, str]], text: str, dev: str) -> None:
    with contextlib.suppress(ValueError):
        net = ipaddress.ip_network(text, strict=False)
        if isinstance(net, ipaddress.IPv4Network) and not net.is_loopback:
            found.append((net, dev))
