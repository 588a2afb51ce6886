"""The readers of host tool output, fed what each host kind really prints.

Fixtures (``fixtures/README.md``): outputs recorded on this host (iproute2 6.1.0 on kernel
6.18, iptables 1.8.9 with both backends) and the shape Debian 12's kernel 6.1 makes iproute2
print. Where only one host's output is known, the other host's shape (one ``{}`` per link a
filter rejects) is made from it by inserting empty and partial objects.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine.runtime import _netident, _network
from sandtree.engine.runtime._netident import pools_in
from sandtree.engine.runtime._netpolicy import PoolFirewall
from sandtree.engine.runtime._network import NetworkPool
from sandtree.engine.runtime._toolout import (
    addresses,
    busy_tables,
    default_route_devices,
    ip_json,
    iptables_version,
    log_message,
    routes,
    saved_tables,
)

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "iproute2-6.1.0-kernel-6.18"
DEBIAN12 = FIXTURES / "iproute2-6.1.0-kernel-6.1-debian12"


def recorded(name: str, host: Path = HERE) -> str:
    return (host / name).read_text(encoding="utf-8")


def as_kernel_6_1_prints_it(text: str) -> str:
    """The listing with what Debian 12 adds around real entries: an empty object per link a
    filter rejected, a link without its name, unknown fields, junk of the wrong type."""
    entries: list[Any] = [{}]
    for entry in json.loads(text):
        entries += [entry, {}, {"ifindex": 99, "flags": [], "some_future_field": {"x": 1}}]
    entries += [{"ifname": "broken", "addr_info": None}, {"dst": None}, [], "text", 7, None]
    return json.dumps(entries)


def test_an_empty_object_per_link_a_filter_rejects_lists_no_link() -> None:
    # Issue 12: this shape crashed cleanup_stale with KeyError: 'ifname'.
    debian12 = recorded("ip-j-link-show-type-veth.json", DEBIAN12)
    assert json.loads(debian12) == [{}]
    assert ip_json(debian12) == []
    assert ip_json(recorded("ip-j-link-show-type-bridge.json")) == []
    veths = [link["ifname"] for link in ip_json(recorded("ip-j-link-show-type-veth.json"))]
    assert veths == ["uplinkp", "uplink0", "sab12ch0"]


@pytest.mark.parametrize(
    "path", sorted(FIXTURES.rglob("*.json")), ids=lambda p: str(p.relative_to(FIXTURES))
)
def test_every_recorded_listing_is_read_with_all_of_its_non_empty_objects(path: Path) -> None:
    """Whatever host recorded it (here, the VM, the VM tests' own recordings)."""
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text)
    assert ip_json(text) == [entry for entry in raw if entry != {}]
    found = addresses(text)
    for link in raw:
        for info in link.get("addr_info", []):
            assert (info["local"], link["ifname"]) in found
    for route in raw:
        if route.get("dst") not in (None, "default"):
            assert (route["dst"], route.get("dev", "")) in routes(text)


def test_the_stock_debian_12_host_reads_as_loopback_only_without_a_default_route() -> None:
    assert addresses(recorded("ip-j-4-addr-show.json", DEBIAN12)) == [("127.0.0.1", "lo")]
    assert default_route_devices(recorded("ip-j-4-route-show-default.json", DEBIAN12)) == []
    assert ("127.0.0.0/8", "lo") in routes(recorded("ip-j-4-route-show-table-all.json", DEBIAN12))


@pytest.mark.parametrize("text", ["", "\n", "not json", '{"ifname": "lo"}', "[1, null, []]", "[{"])
def test_output_that_is_not_a_listing_of_objects_lists_nothing(text: str) -> None:
    assert ip_json(text) == []
    assert addresses(text) == []
    assert routes(text) == []
    assert default_route_devices(text) == []


def test_addresses_are_read_from_either_kernels_shape_of_ip_addr_show() -> None:
    text = recorded("ip-j-4-addr-show.json")
    expected = [("127.0.0.1", "lo"), ("198.18.7.2", "uplink0"), ("10.230.16.1", "sab12ch0")]
    assert addresses(text) == expected
    assert addresses(as_kernel_6_1_prints_it(text)) == expected
    every_family = addresses(as_kernel_6_1_prints_it(recorded("ip-j-addr-show.json")))
    assert ("::1", "lo") in every_family
    assert [a for a in every_family if ":" not in a[0]] == expected


def test_an_address_of_a_link_without_a_name_is_kept_and_one_without_local_is_not() -> None:
    text = json.dumps(
        [
            {"addr_info": [{"family": "inet", "local": "192.0.2.9", "prefixlen": 24}]},
            {"ifname": "eth0", "addr_info": [{"family": "inet", "prefixlen": 24}, "junk"]},
            {"ifname": "eth1", "addr_info": {"local": "192.0.2.10"}},
        ]
    )
    assert addresses(text) == [("192.0.2.9", "")]


def test_routes_are_read_from_either_kernels_shape_without_the_default_route() -> None:
    text = recorded("ip-j-4-route-show-table-all.json")
    found = routes(text)
    assert ("198.18.7.0/30", "uplink0") in found
    assert ("10.230.16.0/30", "sab12ch0") in found
    assert all(dst != "default" for dst, _ in found)
    assert routes(as_kernel_6_1_prints_it(text)) == found
    blackhole = json.dumps([{"type": "blackhole", "dst": "203.0.113.0/24", "flags": []}])
    assert routes(blackhole) == [("203.0.113.0/24", "")]


def test_the_default_routes_device_is_read_from_either_kernels_shape() -> None:
    text = recorded("ip-j-4-route-show-default.json")
    assert default_route_devices(text) == ["uplink0"]
    assert default_route_devices(as_kernel_6_1_prints_it(text)) == ["uplink0"]
    # A version that lists more than the default route: only the default one counts.
    more = json.dumps([{"dst": "10.0.0.0/8", "dev": "vpn0"}, {"dst": "default", "dev": "eth1"}])
    assert default_route_devices(more) == ["eth1"]


def test_the_pool_reads_its_uplink_mtu_and_host_addresses_from_kernel_6_1_shapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outputs = {
        ("ip", "-j", "-4", "route", "show", "default"): recorded("ip-j-4-route-show-default.json"),
        ("ip", "-j", "addr", "show"): recorded("ip-j-addr-show.json"),
    }
    shaped = {argv: as_kernel_6_1_prints_it(text) for argv, text in outputs.items()}
    monkeypatch.setattr(_network, "_run", lambda argv, stdin=None: shaped[tuple(argv)])
    (tmp_path / "uplink0").mkdir()
    (tmp_path / "uplink0" / "mtu").write_text("1400\n")
    monkeypatch.setattr(_network, "_SYS_NET", tmp_path)
    assert NetworkPool._uplink_mtu() == 1400
    assert "198.18.7.2" in NetworkPool._host_addresses()
    assert "10.230.16.1" in NetworkPool._host_addresses()


def test_the_pool_identity_scan_reads_kernel_6_1_shapes_of_addresses_and_routes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outputs = {
        "addr": as_kernel_6_1_prints_it(recorded("ip-j-4-addr-show.json")),
        "route": as_kernel_6_1_prints_it(recorded("ip-j-4-route-show-table-all.json")),
    }

    def fake_run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, stdout=outputs[argv[3]], stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    found = {(str(net), dev) for net, dev in _netident._addresses_and_routes()}
    assert ("198.18.7.2/32", "uplink0") in found
    assert ("198.18.7.0/30", "uplink0") in found
    assert ("10.230.16.0/30", "sab12ch0") in found
    assert not any(net.startswith("127.") for net, _ in found)  # loopback is no conflict


def test_nft_and_legacy_backends_save_the_pools_rules_identically() -> None:
    nft, legacy = recorded("iptables-nft-save.txt"), recorded("iptables-legacy-save.txt")
    assert nft != legacy  # different headers and table order ...
    assert saved_tables(nft) == saved_tables(legacy)  # ... the same tables and rules
    pool = NetworkPool(prefix="sab12c", subnet="10.230.16.0/20", owner="0123456789abcdef")
    assert pool.firewall.policy_of(nft) == pool.firewall.policy_of(legacy)
    assert pool.firewall.policy_of(nft)[-3:] == ("INPUT:True", "FORWARD:True", "POSTROUTING:True")
    for saved in (nft, legacy):
        found = pools_in(saved)
        assert list(found) == ["sab12c"]
        assert found["sab12c"].owner == "0123456789abcdef"
        assert found["sab12c"].groups == {pool.group}
        assert {str(s) for s in found["sab12c"].subnets} == {"10.230.16.0/20"}


def test_a_mixed_backend_warning_and_odd_spacing_do_not_change_what_is_saved() -> None:
    nft = recorded("iptables-nft-save.txt")
    noisy = (
        "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n"
        + nft.replace("-A FORWARD -j ", "-A  FORWARD   -j ").replace("\n", " \r\n")
    )
    assert saved_tables(noisy) == saved_tables(nft)
    assert PoolFirewall.jump_in_place(noisy, "filter", "FORWARD", "SANDTREE-sab12c-FWD")


def test_a_foreign_accept_before_our_jump_is_out_of_place_on_either_backend() -> None:
    for name in ("iptables-nft-save.txt", "iptables-legacy-save.txt"):
        saved = recorded(name).replace(
            "-A FORWARD -j SANDTREE-sab12c-FWD",
            "-A FORWARD -j ACCEPT\n-A FORWARD -j SANDTREE-sab12c-FWD",
        )
        assert not PoolFirewall.jump_in_place(saved, "filter", "FORWARD", "SANDTREE-sab12c-FWD")
        assert PoolFirewall.jump_in_place(saved, "filter", "INPUT", "SANDTREE-sab12c-IN")


def test_busy_tables_name_rules_and_strict_policies_but_not_empty_tables() -> None:
    assert busy_tables(recorded("iptables-legacy-save.txt")) == ["nat: 2 rules", "filter: 20 rules"]
    empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    assert busy_tables(empty) == []
    strict = empty.replace(":FORWARD ACCEPT", ":FORWARD DROP")
    assert busy_tables(strict) == ["filter: 0 rules, FORWARD policy DROP"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (recorded("iptables-nft-version.txt"), ("1.8.9", "nf_tables")),
        (recorded("iptables-legacy-version.txt"), ("1.8.9", "legacy")),
        (recorded("iptables-version.txt", DEBIAN12), ("1.8.9", "nf_tables")),
        ("iptables v1.8.7 (nf_tables)\n", ("1.8.7", "nf_tables")),  # Ubuntu 22.04, RHEL 9
        ("iptables v1.6.1\n", ("1.6.1", "legacy")),  # before 1.8 there was only legacy
        ("iptables v1.9.0 (something new)\n", ("1.9.0", "unknown")),
        ("", ("", "unknown")),
        ("iptables: command failed\n", ("", "unknown")),
    ],
)
def test_the_iptables_backend_is_read_from_its_version_line(
    text: str, expected: tuple[str, str]
) -> None:
    assert iptables_version(text) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"msg": "mount proc: Operation not permitted", "level": "error"}',
         "mount proc: Operation not permitted"),  # crun --log-format=json
        ("plain text from an older runtime", "plain text from an older runtime"),
        ("42", "42"),  # JSON, but not an object: used to raise AttributeError
        ('["a", "b"]', '["a", "b"]'),
        ('{"level": "error"}', '{"level": "error"}'),
        ('{"msg": null}', '{"msg": null}'),
    ],
)  # fmt: skip
def test_a_runtime_log_line_gives_its_message_whatever_its_shape(line: str, expected: str) -> None:
    assert log_message(line) == expected
