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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine.runtime._firewall import detect
from sandtree.testing import SERVER_READY_DEADLINE, real_runtime_missing

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


def test_serve_warns_at_start_when_the_other_iptables_backend_holds_rules(
    scratch: Scratch, tmp_path: Path
) -> None:
    """The warning reaches the operator: ``sandtree serve`` in a scratch netns (joined with
    nsenter, which keeps the host's cgroup mounts) where iptables-legacy holds a rule."""
    for command in ("iptables", "iptables-legacy"):
        if (missing := backend_missing(command)) is not None:
            pytest.skip(missing)
    if detect("iptables").kind != "nf_tables":
        pytest.skip("the host's iptables is not the nft backend")
    if (missing := real_runtime_missing("sandtree serve")) is not None:
        pytest.skip(missing)
    enter = ["nsenter", f"--net=/run/netns/{scratch.netns}"]
    subprocess.run([*enter, "iptables-legacy", "-I", "FORWARD", "-j", "ACCEPT"], check=True)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "PYTHONUNBUFFERED": "1"}
    argv = [*enter, sys.executable, "-m", "sandtree", "serve", "--port", "19450",
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        # A deadline for a server that hangs: killing it ends the loop below.
        watchdog = threading.Timer(SERVER_READY_DEADLINE, proc.kill)
        watchdog.start()
        try:
            # Until uvicorn is up (the pool is set up before that) or the server exits.
            for line in proc.stdout:
                lines.append(line)
                if "Application startup complete" in line:
                    break
        finally:
            watchdog.cancel()
            proc.terminate()
            proc.communicate(timeout=60)
    output = "".join(lines)
    assert "Application startup complete" in output, output
    warning = next(line for line in lines if "iptables-legacy holds rules too" in line)
    assert "(filter: 1 rule)" in warning
    assert "update-alternatives --config iptables" in warning
