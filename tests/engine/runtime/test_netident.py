"""Which network prefix and subnet a data dir gets: derived once, recorded, never another
pool's. Host state is given as data (no iptables or ip needed)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from sandtree.engine.runtime._netident import (
    RECORD_FILE,
    HostNetworks,
    PoolIdentity,
    group_of,
    pool_identity,
    pools_in,
)

_SAVE_OF_ANOTHER_POOL = """\
*filter
:INPUT ACCEPT [0:0]
:SANDTREE-st-FWD - [0:0]
:SANDTREE-st-IN - [0:0]
-A INPUT -j SANDTREE-st-IN
-A SANDTREE-st-FWD ! -s 10.213.0.0/16 -m devgroup --src-group 0xb03468f -j DROP
-A SANDTREE-st-IN -m devgroup --src-group 0xb03468f -j DROP
COMMIT
"""


def _host(**fields: object) -> HostNetworks:
    values: dict[str, object] = {"pools": {}, "links": {}, "netns": set(), "networks": []}
    values.update(fields)
    return HostNetworks(**values)  # type: ignore[arg-type]


def test_a_data_dir_gets_one_identity_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    first = pool_identity(tmp_path, _host())
    again = pool_identity(tmp_path, _host())

    assert again == first
    assert json.loads((tmp_path / RECORD_FILE).read_text())["prefix"] == first.prefix
    assert len(first.prefix) + 1 + 5 <= 15  # <prefix>h<n> fits an interface name
    assert ipaddress.IPv4Network(first.subnet).subnet_of(ipaddress.IPv4Network("10.224.0.0/12"))


def test_two_data_dirs_get_different_prefixes_and_subnets(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = pool_identity(tmp_path / "a", _host())
    b = pool_identity(tmp_path / "b", _host())

    assert a.owner != b.owner
    assert a.prefix != b.prefix


def test_another_pools_chains_prefix_group_and_subnet_are_never_taken() -> None:
    host = _host(pools=pools_in(_SAVE_OF_ANOTHER_POOL))
    taken = PoolIdentity(owner="0" * 16, prefix="st", subnet="10.224.0.0/20")
    overlapping = PoolIdentity(owner="0" * 16, prefix="s00000", subnet="10.213.16.0/20")
    free = PoolIdentity(owner="0" * 16, prefix="s00000", subnet="10.224.0.0/20")

    assert host.pools["st"].groups == {0xB03468F}
    assert host.conflict(taken, recorded=True) is not None
    assert host.conflict(overlapping, recorded=False) is not None
    assert host.conflict(free, recorded=False) is None


def test_a_recorded_identity_another_pool_took_is_given_up_for_a_free_one(
    tmp_path: Path,
) -> None:
    first = pool_identity(tmp_path, _host())
    net = ipaddress.IPv4Network(first.subnet)
    # While we were stopped, the host got an address inside our subnet.
    busy = _host(networks=[(ipaddress.IPv4Network(f"{net.network_address + 5}/32"), "eth1")])

    moved = pool_identity(tmp_path, busy)

    assert moved.owner == first.owner
    assert moved.subnet != first.subnet
    assert json.loads((tmp_path / RECORD_FILE).read_text())["subnet"] == moved.subnet


def test_our_own_leftover_veths_do_not_count_as_a_collision(tmp_path: Path) -> None:
    first = pool_identity(tmp_path, _host())
    gateway = ipaddress.IPv4Network(first.subnet).network_address + 1
    leftovers = _host(
        links={f"{first.prefix}h0": group_of(first.prefix)},
        netns={f"{first.prefix}-0"},
        networks=[(ipaddress.IPv4Network(f"{gateway}/32"), f"{first.prefix}h0")],
    )

    assert pool_identity(tmp_path, leftovers) == first


def test_a_broader_route_is_no_collision_but_a_nameserver_inside_is(tmp_path: Path) -> None:
    ident = PoolIdentity(owner="1" * 16, prefix="s11111", subnet="10.224.0.0/20")
    vpn = _host(networks=[(ipaddress.IPv4Network("10.0.0.0/8"), "tun0")])
    resolver = _host(networks=[(ipaddress.IPv4Network("10.224.3.3/32"), "")])

    assert vpn.conflict(ident, recorded=False) is None
    assert resolver.conflict(ident, recorded=False) is not None


@pytest.mark.parametrize("output", ["[{},{}]", "[]", "", "not json"])
def test_scanning_the_host_survives_any_iproute2_output(
    monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    import subprocess

    class Done:
        stdout = output

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Done())
    host = HostNetworks.scan("", resolv_conf="/nonexistent")

    assert host.networks == []
