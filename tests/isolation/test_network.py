"""Sandbox networking through real runs: offline runs have only ``lo``; online runs get ``eth0``
and reach "the internet" but never the host, private ranges or each other.

Network-safety: traffic only goes to this host's own addresses or into namespaces these tests
create ("the internet" is a netns holding 198.18.0.0/15 benchmark addresses, as in
tests/engine/runtime/test_network.py).
"""

from __future__ import annotations

import json
import select
import selectors
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from sandtree.engine.runtime._network import NetworkPool
from sandtree.errors import InvalidRequestError
from sandtree.testing import SimulatedInternet, simulated_internet

from .kit import (
    TIERS,
    Sandboxes,
    SandboxesFactory,
    python,
    shell_results,
    stdout,
    succeeded,
)

pytestmark = [pytest.mark.isolation, pytest.mark.anyio]

#: Online tiers: the gVisor of this host refuses networking (see the test below).
ONLINE_TIERS = ["container"]

# Answers each connection with the peer's address, then closes; prints READY when listening.
_SERVER = r"""
import socket, sys, threading
def serve(s):
    while True:
        c, peer = s.accept()
        c.sendall(peer[0].encode() + b"\n")
        c.close()
for port in sys.argv[2:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(port)))
    s.listen(16)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("READY", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def internet(pool: NetworkPool) -> Iterator[SimulatedInternet]:
    """A simulated internet with a server on port 8080 of both of its addresses."""
    with simulated_internet(private_net="10.215") as net:
        server = subprocess.Popen(
            ["ip", "netns", "exec", net.netns, python(), "-c", _SERVER, "0.0.0.0", "8080"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(server.stdout, selectors.EVENT_READ)
                assert sel.select(timeout=10), "the internet's server did not start within 10 s"
            assert server.stdout.readline().strip() == "READY"
            yield net
        finally:
            server.kill()
            server.wait()
            for stream in (server.stdin, server.stdout):
                if stream is not None:
                    stream.close()


def _host_addresses() -> list[str]:
    links = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], check=True, capture_output=True, text=True
        ).stdout
    )
    return sorted(
        a["local"] for link in links for a in link["addr_info"] if not a["local"].startswith("127.")
    )


def _interfaces(proc_net_dev: str) -> list[str]:
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


@pytest.mark.parametrize("tier", TIERS)
async def test_an_offline_run_has_only_loopback(sandboxes: Sandboxes, tier: str) -> None:
    out = await sandboxes.ok("cat /proc/net/dev", tier=tier)
    assert _interfaces(out) == ["lo"]
    links = await sandboxes.ok("ip -o link | cut -d: -f2", tier=tier)
    assert links.split() == ["lo"]


@pytest.mark.gvisor
async def test_a_gvisor_run_with_networking_is_refused_naming_the_tier_to_use_instead(
    make_sandboxes: SandboxesFactory, pool: NetworkPool
) -> None:
    async with make_sandboxes(network=pool) as sb:
        with pytest.raises(InvalidRequestError, match="isolation='container'"):
            await sb.engine.spawn(sb.spec("true", tier="gvisor", network=True))
        # Offline gVisor runs on the same engine are unaffected.
        assert stdout(succeeded(await sb.run("echo ok", tier="gvisor"))) == "ok\n"


@pytest.mark.parametrize("tier", ONLINE_TIERS)
async def test_an_online_run_has_eth0_with_its_leased_address_and_a_default_route(
    make_sandboxes: SandboxesFactory, pool: NetworkPool, tier: str
) -> None:
    async with make_sandboxes(network=pool) as sb:
        op = succeeded(
            await sb.run(
                "ip -o link | cut -d: -f2 | cut -d@ -f1 | tr -d ' ' | sort | tr '\\n' ' '; echo;"
                " ip -o -4 addr show dev eth0; ip route show default",
                tier=tier,
                network=True,
            )
        )
        events = [e async for e in sb.engine.follow_events(op, follow=False)]
    (configured,) = [e.data["configured"] for e in events if e.type == "network"]
    out = stdout(op)
    assert out.splitlines()[0].split() == ["eth0", "lo"]
    assert f"inet {configured['ip4']}" in out
    assert f"default via {configured['ip4_gw']} dev eth0" in out
    assert configured["ip4"].startswith(str(pool.subnet.network_address).rsplit(".", 1)[0])


@pytest.mark.parametrize("tier", ONLINE_TIERS)
async def test_an_online_run_reaches_a_server_in_the_test_internet_through_nat(
    make_sandboxes: SandboxesFactory, pool: NetworkPool, internet: SimulatedInternet, tier: str
) -> None:
    async with make_sandboxes(network=pool) as sb:
        out = await sb.ok(f"nc -w 5 {internet.server} 8080 </dev/null", tier=tier, network=True)
    # The server saw the host's address on its link, not the sandbox's: NAT happened.
    assert out == f"{internet.host_side}\n"


@pytest.mark.parametrize("tier", ONLINE_TIERS)
async def test_an_online_run_cannot_reach_private_addresses(
    make_sandboxes: SandboxesFactory, pool: NetworkPool, internet: SimulatedInternet, tier: str
) -> None:
    async with make_sandboxes(network=pool) as sb:
        out = await sb.ok(
            f"nc -w 2 {internet.private} 8080 </dev/null; echo private=$?;"
            f" nc -w 5 {internet.server} 8080 </dev/null; echo public=$?",
            tier=tier,
            network=True,
        )
    # The same server answers on its public address (so the private one was dropped en route).
    assert out == f"private=1\n{internet.host_side}\npublic=0\n"


@pytest.mark.parametrize("tier", ONLINE_TIERS)
async def test_an_online_run_cannot_reach_a_host_service_on_any_host_address(
    make_sandboxes: SandboxesFactory, pool: NetworkPool, tier: str
) -> None:
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        port = server.getsockname()[1]
        async with make_sandboxes(network=pool) as sb:
            # The host's addresses as they are now, with the lease's gateway among them.
            op = await sb.engine.spawn(
                sb.spec(
                    f"gw=$(ip route | awk '/default/ {{print $3}}'); echo gw=$gw;"
                    f" nc -w 2 $gw {port} </dev/null; echo gateway=$?;"
                    f" for a in $HOST_ADDRS; do nc -w 2 $a {port} </dev/null && echo reached=$a;"
                    " done;"
                    " echo done=1",
                    tier=tier,
                    network=True,
                    env={"HOST_ADDRS": " ".join(_host_addresses())},
                    timeout=30,
                )
            )
            out = stdout(succeeded(await sb.finish(op)))
        probes = shell_results(out)
        assert probes["gw"], out
        assert probes["gateway"] != "0", out
        assert "reached" not in probes, out
        assert probes["done"] == "1"
        # Not even a connection waiting in the backlog got through.
        assert select.select([server], [], [], 0) == ([], [], [])


async def test_two_online_runs_cannot_reach_each_other(
    make_sandboxes: SandboxesFactory, pool: NetworkPool
) -> None:
    async with make_sandboxes(network=pool) as sb:
        listener = await sb.engine.spawn(
            sb.spec(
                "timeout 4 nc -l -p 8080 </dev/null; echo listener-done",
                network=True,
            )
        )
        address = None
        async for event in sb.engine.follow_events(listener):
            if event.type == "network":
                address = str(event.data["configured"]["ip4"]).split("/")[0]
                break
        assert address is not None
        out = await sb.ok(f"nc -w 2 {address} 8080 </dev/null; echo reached=$?", network=True)
        assert shell_results(out)["reached"] != "0"
        assert stdout(succeeded(await sb.finish(listener))) == "listener-done\n"


@pytest.mark.parametrize("tier", ONLINE_TIERS)
async def test_a_finished_online_run_releases_its_namespace_and_veth(
    make_sandboxes: SandboxesFactory, pool: NetworkPool, tier: str
) -> None:
    async with make_sandboxes(network=pool) as sb:
        op = succeeded(await sb.run("true", tier=tier, network=True))
        events = [e async for e in sb.engine.follow_events(op, follow=False)]
        (network,) = [e.data for e in events if e.type == "network"]
        assert network["interfaces"][0]["name"] == "eth0"
        # The release runs after the reply, off the event loop.
        with anyio.fail_after(10):
            await sb.engine.runs.settle()
        assert _pool_links(pool) == []


def _pool_links(pool: NetworkPool) -> list[str]:
    netns = Path("/run/netns")
    names = (
        [n for n in netns.iterdir() if n.name.startswith(f"{pool.prefix}-")]
        if (netns.is_dir())
        else []
    )
    veths = [p for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"{pool.prefix}h")]
    return sorted(str(p) for p in [*names, *veths])
