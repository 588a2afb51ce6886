"""Outbound-only sandbox networking, checked with real namespaces and real TCP traffic.

Network-safety: traffic only goes to this host's own addresses or into namespaces these
tests create ("the internet" is a netns holding 198.18.0.0/15 benchmark addresses).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import select
import selectors
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine.runtime._network import NetworkLease, NetworkPool
from sandtree.testing import SimulatedInternet, simulated_internet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")

# Serves on every port given: answers each connection with the peer's IP, then closes.
SERVER = r"""
import socket, sys, threading
def serve(s):
    while True:
        c, peer = s.accept()
        c.sendall(peer[0].encode() + b"\n")
        c.close()
socks = []
for port in sys.argv[2:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(port)))
    s.listen(16)
    socks.append(s)
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("READY", flush=True)
sys.stdin.read()
"""

# Connects to every host:port in parallel; prints one JSON object mapping each target to
# the line the server sent, "connected" if it sent none, or null if connecting failed.
CLIENT = r"""
import json, socket, sys, threading
out = {}
def probe(t):
    host, port = t.rsplit(":", 1)
    try:
        c = socket.create_connection((host, int(port)), timeout=float(sys.argv[1]))
    except OSError:
        out[t] = None
        return
    with c:
        try:
            out[t] = c.makefile().readline().strip() or "connected"
        except OSError:
            out[t] = "connected"
ts = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[2:]]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
"""


def ip_json(*args: str) -> Any:
    return json.loads(subprocess.run(["ip", "-j", *args], check=True, capture_output=True).stdout)


def in_sandbox(lease: NetworkLease, *targets: str) -> dict[str, str | None]:
    """Run the probe client as a process that joined the lease's netns by path, like crun."""
    done = subprocess.run(
        ["nsenter", f"--net={lease.netns_path}", sys.executable, "-c", CLIENT, "1", *targets],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    result: dict[str, str | None] = json.loads(done.stdout)
    return result


def start_server(request: pytest.FixtureRequest, prefix: list[str], bind: str, *ports: int) -> None:
    """Start SERVER (inside a netns when prefix says so) and wait until it listens."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", SERVER, bind, *map(str, ports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def stop() -> None:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()

    request.addfinalizer(stop)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=10), "server did not start within 10 s"
    assert proc.stdout.readline().strip() == "READY"


@pytest.fixture
def make_pool(request: pytest.FixtureRequest) -> Callable[..., NetworkPool]:
    """Build a set-up pool with a unique prefix and /24; torn down after the test."""

    def make(**kwargs: Any) -> NetworkPool:
        kwargs.setdefault("prefix", "t" + secrets.token_hex(3))  # hex: never an "h"
        kwargs.setdefault("subnet", f"10.213.{random.randrange(256)}.0/24")
        pool = NetworkPool(**kwargs)
        request.addfinalizer(pool.teardown)
        pool.cleanup_stale()
        pool.setup()
        return pool

    return make


@pytest.fixture
def pool(make_pool: Callable[..., NetworkPool]) -> NetworkPool:
    return make_pool()


@pytest.fixture
def internet() -> Iterator[SimulatedInternet]:
    with simulated_internet(private_net="10.214") as net:
        yield net


def test_a_leased_namespace_has_eth0_with_its_address_a_default_route_and_lo_up(
    pool: NetworkPool,
) -> None:
    lease = pool.lease()
    assert lease.netns_path == f"/run/netns/{lease.name}"
    assert Path(lease.netns_path).exists()
    links = {link["ifname"]: link for link in ip_json("-n", lease.name, "addr", "show")}
    assert "UP" in links["lo"]["flags"]
    assert "UP" in links["eth0"]["flags"]
    eth0 = [(a["family"], f"{a['local']}/{a['prefixlen']}") for a in links["eth0"]["addr_info"]]
    assert eth0 == [("inet", lease.address)]  # and no IPv6 address to reach the host with
    routes = ip_json("-n", lease.name, "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(lease.gateway, "eth0")]
    host_end = Path(f"/proc/sys/net/ipv6/conf/{lease.host_interface}/disable_ipv6")
    assert host_end.read_text().strip() == "1"
    assert lease.counters()[0]["name"] == "eth0"


def test_a_sandbox_reaches_the_internet_through_nat(
    pool: NetworkPool, internet: SimulatedInternet, request: pytest.FixtureRequest
) -> None:
    start_server(request, ["ip", "netns", "exec", internet.netns], "0.0.0.0", 8080)
    lease = pool.lease()
    before = lease.counters()[0]
    target = f"{internet.server}:8080"
    # The server sees the host's address on its link, not the sandbox's: NAT happened.
    assert in_sandbox(lease, target) == {target: internet.host_side}
    after = lease.counters()[0]
    for key in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets"):
        assert int(after[key]) > int(before[key]), key


def test_private_destinations_are_dropped_except_dns_to_the_hosts_resolver(
    make_pool: Callable[..., NetworkPool],
    internet: SimulatedInternet,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    start_server(request, ["ip", "netns", "exec", internet.netns], "0.0.0.0", 53, 8080)
    host_addr = next(
        a["local"]
        for link in ip_json("addr", "show")
        for a in link["addr_info"]
        if a["family"] == "inet" and not a["local"].startswith("127.")
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        f"nameserver 127.0.0.53\nnameserver {host_addr}\nnameserver {internet.private}\n"
    )
    lease = make_pool(resolv_conf=str(resolv)).lease()
    # Loopback and host resolvers are useless behind the closed INPUT: not handed out.
    assert lease.nameservers == [internet.private]
    dns, other, public = (
        f"{internet.private}:53",
        f"{internet.private}:8080",
        f"{internet.server}:8080",
    )
    assert in_sandbox(lease, dns, other, public) == {
        dns: internet.host_side,
        other: None,
        public: internet.host_side,
    }
    strict = make_pool(resolv_conf=str(resolv), allow_private_nameservers=False).lease()
    assert strict.nameservers == []
    assert in_sandbox(strict, dns) == {dns: None}


def test_host_services_are_unreachable_from_a_sandbox(pool: NetworkPool) -> None:
    lease = pool.lease()
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        port = server.getsockname()[1]
        host_addrs = {
            a["local"]
            for link in ip_json("-4", "addr", "show")
            for a in link["addr_info"]
            if not a["local"].startswith("127.")  # the sandbox's 127.0.0.1 is its own lo
        }
        assert lease.gateway in host_addrs
        targets = [f"{a}:{port}" for a in sorted(host_addrs)]
        assert in_sandbox(lease, *targets) == dict.fromkeys(targets)
        # Not even a connection waiting in the backlog got through.
        assert select.select([server], [], [], 0) == ([], [], [])
        # Sanity check: the server does serve those addresses to the host itself.
        for addr in sorted(host_addrs):
            with socket.create_connection((addr, port), timeout=1):
                pass


def test_two_sandboxes_cannot_reach_each_other(
    pool: NetworkPool, request: pytest.FixtureRequest
) -> None:
    a, b = pool.lease(), pool.lease()
    start_server(request, ["nsenter", f"--net={b.netns_path}"], "0.0.0.0", 8080)
    b_addr = b.address.split("/")[0]
    target = f"{b_addr}:8080"
    assert in_sandbox(a, target) == {target: None}
    assert in_sandbox(b, target) == {target: b_addr}  # sanity: b's server is up
    assert in_sandbox(a, f"{b.gateway}:8080") == {f"{b.gateway}:8080": None}


def test_release_removes_the_namespace_and_its_veth(pool: NetworkPool) -> None:
    lease = pool.lease()
    pool.release(lease)
    assert not Path(lease.netns_path).exists()
    assert not Path(f"/sys/class/net/{lease.host_interface}").exists()
    assert pool.lease().name != lease.name  # never handed out again right away


def test_a_warm_pool_serves_leases_without_creating_namespaces(pool: NetworkPool) -> None:
    pool.refill()
    warm = sorted(n for n in os.listdir("/run/netns") if n.startswith(f"{pool.prefix}-"))
    assert len(warm) == pool.pool_size
    lease = pool.lease()
    assert lease.name in warm
    assert sorted(n for n in os.listdir("/run/netns") if n.startswith(f"{pool.prefix}-")) == warm


def test_cleanup_stale_removes_what_a_crashed_process_left(pool: NetworkPool) -> None:
    leftovers = [pool.lease(), pool.lease()]
    NetworkPool(prefix=pool.prefix, subnet=str(pool.subnet)).cleanup_stale()  # after restart
    for lease in leftovers:
        assert not Path(lease.netns_path).exists()
        assert not Path(f"/sys/class/net/{lease.host_interface}").exists()


def test_setup_twice_does_not_duplicate_rules_and_teardown_removes_them(
    pool: NetworkPool,
) -> None:
    def ours() -> list[str]:
        out = []
        for table in ("filter", "nat"):
            rules = subprocess.run(
                ["iptables", "-t", table, "-S"], check=True, capture_output=True, text=True
            ).stdout.splitlines()
            out += [r for r in rules if f"SANDTREE-{pool.prefix}-" in r]
        return out

    first = ours()
    assert sum(r.startswith("-A FORWARD") for r in first) == 1
    pool.setup()
    assert ours() == first
    pool.teardown()
    assert ours() == []
