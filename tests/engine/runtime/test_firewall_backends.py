"""The network pool on each iptables backend (nft: Debian 12's default; legacy), and with
the other backend holding rules too, each in a scratch network namespace.

Every scenario runs ``netns_scenario.py`` under ``ip netns exec`` in a netns made for it, so
no rule, veth or sysctl of these tests reaches the host's own netns; "the internet" is a
netns holding 198.18.0.0/15 benchmark addresses, routed by the scratch netns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine.runtime._firewall import detect

SCENARIO = Path(__file__).with_name("netns_scenario.py")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
]


def backend_missing(command: str) -> str | None:
    if shutil.which(command) is None or shutil.which(f"{command}-save") is None:
        return f"{command} is not installed (apt-get install iptables)"
    return None


@dataclasses.dataclass(frozen=True)
class Scratch:
    netns: str
    prefix: str
    """The pool's prefix (hex after the "f": never an "h")."""


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    """A fresh network namespace, deleted with whatever its pool left in /run/netns."""
    made = Scratch("fwb-" + secrets.token_hex(3), "f" + secrets.token_hex(3))
    subprocess.run(["ip", "netns", "add", made.netns], check=True, capture_output=True)
    yield made
    leftovers = [n for n in os.listdir("/run/netns") if n.startswith(f"{made.prefix}-")]
    for name in [made.netns, *leftovers]:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def run_scenario(scratch: Scratch, iptables: str, foreign: str | None = None) -> dict[str, Any]:
    argv = [
        "ip", "netns", "exec", scratch.netns, sys.executable, str(SCENARIO),
        iptables, scratch.prefix, f"10.213.{random.randrange(256)}.0/24",
        *([foreign] if foreign else []),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def expected_probes(report: dict[str, Any]) -> dict[str, str | None]:
    return {
        "internet": report["host_side"],  # through NAT: the server sees the host's address
        "private": None,
        "gateway": None,
        "host uplink": None,
        "other sandbox": None,
        "other sandbox, from itself": report["b_address"],  # sanity: its server is up
    }


@pytest.mark.parametrize(
    ("iptables", "kind"), [("iptables-nft", "nf_tables"), ("iptables-legacy", "legacy")]
)
def test_the_pool_nats_and_isolates_sandboxes_on_either_iptables_backend(
    scratch: Scratch, iptables: str, kind: str
) -> None:
    if (missing := backend_missing(iptables)) is not None:
        pytest.skip(missing)
    report = run_scenario(scratch, iptables)
    assert report["backend"]["kind"] == kind
    assert report["warning"] is None
    assert report["probes"] == expected_probes(report)
    assert report["left"] == []


@pytest.mark.parametrize(
    ("iptables", "foreign"),
    [("iptables-nft", "iptables-legacy"), ("iptables-legacy", "iptables-nft")],
)
def test_accept_rules_of_the_other_backend_do_not_open_what_the_pool_drops(
    scratch: Scratch, iptables: str, foreign: str
) -> None:
    for command in (iptables, foreign):
        if (missing := backend_missing(command)) is not None:
            pytest.skip(missing)
    report = run_scenario(scratch, iptables, foreign)
    assert report["probes"] == expected_probes(report)
    # ... and the operator is told both backends are in use.
    assert report["backend"]["other_tables"] == ["filter: 2 rules"]
    assert foreign in report["warning"]
    assert report["left"] == []


def test_the_hosts_iptables_alternative_is_detected_as_its_backend() -> None:
    if (missing := backend_missing("iptables")) is not None:
        pytest.skip(missing)
    found = detect("iptables")
    target = os.path.basename(os.path.realpath(shutil.which("iptables") or ""))
    # Debian's alternative links to xtables-<backend>-multi through iptables-<backend>.
    by_name = {"xtables-nft-multi": "nf_tables", "xtables-legacy-multi": "legacy"}
    assert found.kind == by_name.get(target, found.kind)
    assert found.kind in ("nf_tables", "legacy")
    assert found.version.count(".") >= 1
