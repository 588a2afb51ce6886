"""The stock-host VM is the host issue 12 describes (Debian 12's own 6.1 kernel, systemd,
cgroup v2 unified, iptables on nf_tables, the current checkout installed), and our
real-runtime tests run on it.

One boot gathers the host's facts for the first tests; the suite tests boot once each. The
``ip -j`` output the network code parses is recorded in
``tests/engine/runtime/fixtures/iproute2-6.1-*.json``; re-record it with
``SANDTREE_VM_RECORD=1 python3 -m pytest tests/vm -k iproute2``.

Run them all: ``python3 -m pytest tests/vm -m vm`` (``SANDTREE_VM_FULL=1`` adds the whole
isolation suite, which takes far longer under emulation).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import secrets
import shlex
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from .kit import CHECKOUT, VmImage, VmResult, run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(3600)]

FIXTURES = CHECKOUT / "tests" / "engine" / "runtime" / "fixtures"
#: guest command → fixture name, for each `ip -j` call the network code makes.
IP_COMMANDS = {
    "link-veth-none": "ip -j link show type veth",
    "link-veth-pair": "ip -j link show type veth",
    "addr": "ip -j addr show",
    "addr4": "ip -j -4 addr show",
    "route4-all": "ip -j -4 route show table all",
    "route4-default": "ip -j -4 route show default",
}

FACTS_SCRIPT = r"""
set -u
out=$SANDTREE_VM_OUT
# --wait: the boot's jobs are done, so the facts are the settled system's.
systemctl is-system-running --wait > $out/system-state 2>&1 || true
uname -r > $out/uname-r
stat -f -c %T /sys/fs/cgroup > $out/cgroup-fs
cat /sys/fs/cgroup/cgroup.controllers > $out/cgroup-controllers
cat /proc/1/comm > $out/pid1-comm
iptables --version > $out/iptables-version
python3 --version > $out/python-version
for tool in crun runc runsc; do $tool --version 2>&1 | head -n 1 > $out/$tool-version; done
ip -V > $out/ip-version
if [ -d /sys/module/veth ]; then echo loaded; else echo absent; fi > $out/veth-module-before
{link_veth_none} > $out/link-veth-none.json
ip link add vmtest-veth0 type veth peer name vmtest-veth1
ip link add vmtest-dummy0 type dummy
ip addr add 10.77.0.1/30 dev vmtest-veth0
ip link set vmtest-veth0 up
ip link set vmtest-veth1 up
{link_veth_pair} > $out/link-veth-pair.json
{addr} > $out/addr.json
{addr4} > $out/addr4.json
{route4_all} > $out/route4-all.json
{route4_default} > $out/route4-default.json
python3 -c 'import sandtree; print(sandtree.__file__)' > $out/sandtree-file
sandtree --version > $out/sandtree-version
sha256sum /mnt/host/src/sandtree/__init__.py | cut -d' ' -f1 > $out/checkout-sha256
python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())' \
    http://10.0.2.2:{port}/token > $out/host-http 2>&1
"""


@contextlib.contextmanager
def loopback_http(token: str) -> Iterator[int]:
    """A host server on 127.0.0.1 answering ``token``: what the guest sees as 10.0.2.2."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = token.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def host_token() -> str:
    return secrets.token_hex(8)


@pytest.fixture(scope="module")
def facts(vm_image: VmImage, host_token: str) -> VmResult:
    """One boot of the stock host, with a NIC, gathering the facts the tests below check."""
    with loopback_http(host_token) as port:
        script = FACTS_SCRIPT.replace("{port}", str(port))
        for name, command in IP_COMMANDS.items():
            script = script.replace("{" + name.replace("-", "_") + "}", command)
        result = run_in_vm(script, timeout=1200, network=True)
    assert result.returncode == 0, result.output
    print(f"facts boot: {result.boot_seconds:.1f}s to the job, wall {result.wall_seconds:.1f}s")
    return result


def fact(facts: VmResult, name: str) -> str:
    return facts.files[name].decode().strip()


def test_the_guest_runs_debian_12_s_stock_6_1_kernel(facts: VmResult) -> None:
    release = fact(facts, "uname-r")
    assert release.startswith("6.1."), release
    assert release.endswith("-amd64"), release  # Debian's generic kernel, not -cloud-


def test_the_guest_s_cgroups_are_v2_unified_with_the_limit_controllers(facts: VmResult) -> None:
    assert fact(facts, "cgroup-fs") == "cgroup2fs"
    controllers = fact(facts, "cgroup-controllers").split()
    assert {"memory", "pids", "cpu"} <= set(controllers), controllers


def test_the_guest_s_pid_1_is_systemd_and_its_boot_completes(facts: VmResult) -> None:
    assert fact(facts, "pid1-comm") == "systemd"
    assert fact(facts, "system-state") == "running", facts.console[-3000:]


def test_the_guest_s_iptables_is_the_nf_tables_backend(facts: VmResult) -> None:
    assert "nf_tables" in fact(facts, "iptables-version")


def test_the_guest_has_python_3_11_and_the_runtimes(facts: VmResult) -> None:
    assert fact(facts, "python-version").startswith("Python 3.11.")
    assert fact(facts, "crun-version").startswith("crun version ")
    assert fact(facts, "runc-version").startswith("runc version ")
    assert fact(facts, "runsc-version").startswith("runsc version ")


def test_the_guest_imports_sandtree_from_the_current_checkout(facts: VmResult) -> None:
    assert fact(facts, "sandtree-file") == "/mnt/host/src/sandtree/__init__.py"
    here = hashlib.sha256((CHECKOUT / "src" / "sandtree" / "__init__.py").read_bytes())
    assert fact(facts, "checkout-sha256") == here.hexdigest()
    assert fact(facts, "sandtree-version").startswith("sandtree, version ")


def test_the_guest_reaches_a_host_loopback_server_at_10_0_2_2(
    facts: VmResult, host_token: str
) -> None:
    assert fact(facts, "host-http") == host_token


def test_iproute2_6_1_prints_an_empty_object_per_link_until_the_veth_module_is_loaded(
    facts: VmResult,
) -> None:
    # Before any veth exists the kernel does not know the kind "veth", ignores the filter
    # and returns every link; iproute2 then filters after opening each JSON object: one {}
    # per link (lo and the NIC here), issue 12's KeyError at the server's first start.
    assert fact(facts, "veth-module-before") == "absent"
    none = json.loads(facts.files["link-veth-none.json"])
    assert len(none) == 2, none
    assert all(entry == {} for entry in none), none
    # Once the module is loaded the kernel filters, and only the veths are printed.
    pair = json.loads(facts.files["link-veth-pair.json"])
    assert sorted(e.get("ifname") for e in pair) == ["vmtest-veth0", "vmtest-veth1"], pair


def _shape(name: str, data: list[dict[str, Any]]) -> list[Any]:
    """What the network code reads from each output, without the per-boot MACs and lifetimes."""
    if name.startswith("link"):
        return [entry.get("ifname") for entry in data]
    if name.startswith("addr"):
        return [
            (entry.get("ifname"), sorted(a["local"] for a in entry.get("addr_info", [])
                                         if a.get("family") == "inet"))
            for entry in data
        ]  # fmt: skip
    return [(r.get("dst"), r.get("dev"), r.get("gateway"), r.get("table")) for r in data]


@pytest.mark.parametrize("name", sorted(IP_COMMANDS))
def test_the_recorded_iproute2_6_1_fixtures_are_what_the_stock_host_prints(
    facts: VmResult, name: str
) -> None:
    path = FIXTURES / f"iproute2-6.1-{name}.json"
    printed = facts.files[f"{name}.json"]
    if os.environ.get("SANDTREE_VM_RECORD") == "1":
        FIXTURES.mkdir(parents=True, exist_ok=True)
        path.write_bytes(json.dumps(json.loads(printed), indent=1).encode() + b"\n")
    assert fact(facts, "ip-version").startswith("ip utility, iproute2-6.1")
    recorded = json.loads(path.read_text())
    assert _shape(name, recorded) == _shape(name, json.loads(printed))


# -- our real-runtime tests, inside the VM -------------------------------------------------------

#: suite name → pytest arguments (relative to the checkout). "limits" runs in CI; the rest
#: only with SANDTREE_VM_FULL=1. Measured 2026-12-04: limits 7 passed (a 43 s job); the whole
#: isolation suite 94 passed, 1 xfailed and 4 failed, all gVisor (an 8 min job): a fork bomb
#: under runsc ends SUCCESS, not FAILED on the pids limit (alone and beside other hogs); an
#: output flood drops 0.9 MB, not the > 10 MiB the test expects of 3 s of `yes` (TCG makes
#: runsc slow); a signalled exec's exit event does not come within 30 s.
SUITES = {
    "limits": ["tests/isolation/test_limits.py", "-m", "not gvisor"],
    "isolation": ["tests/isolation"],
}
CI_SUITES = {"limits"}

# The checkout is read-only: no cache, and no hypothesis plugin (its example database there
# warns, and warnings are errors). -v: a VM past its deadline still says where it was.
SUITE_SCRIPT = r"""
set -u
cd /mnt/host
# Software emulation: windows a workload needs to reach a limit are this much longer.
export SANDTREE_TEST_TIME_SCALE=6
python3 -m pytest -p no:cacheprovider -p no:hypothesispytest -v -rfEs --rootdir=/mnt/host \
    --junitxml=$SANDTREE_VM_OUT/junit.xml {args}
"""


def _outcomes(junit: bytes) -> dict[str, list[str]]:
    """Each test's id under its outcome (passed, failed, error, skipped, xfailed), with the
    message where there is one."""
    outcomes: dict[str, list[str]] = {
        "passed": [], "failed": [], "error": [], "skipped": [], "xfailed": []
    }  # fmt: skip
    for case in ET.fromstring(junit).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        for kind, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(kind)
            if found is not None:
                if found.get("type") == "pytest.xfail":
                    outcome = "xfailed"  # a known, reported failure (strict xfail elsewhere)
                outcomes[outcome].append(f"{test_id}: {found.get('message', '')}")
                break
        else:
            outcomes["passed"].append(test_id)
    return outcomes


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_our_real_runtime_tests_pass_on_the_stock_host(vm_image: VmImage, suite: str) -> None:
    if suite not in CI_SUITES and os.environ.get("SANDTREE_VM_FULL") != "1":
        pytest.skip(f"the {suite} suite in the VM runs only with SANDTREE_VM_FULL=1")
    args = shlex.join(SUITES[suite])
    result = run_in_vm(SUITE_SCRIPT.replace("{args}", args), timeout=3000)
    junit = result.files.get("junit.xml")
    assert junit is not None, result.output[-5000:]
    outcomes = _outcomes(junit)
    counts = ", ".join(f"{len(ids)} {outcome}" for outcome, ids in outcomes.items() if ids)
    print(f"{suite}: {result.boot_seconds:.1f}s to the job, {result.job_seconds:.1f}s: {counts}")
    problems = outcomes["failed"] + outcomes["error"] + outcomes["skipped"]
    assert not problems, "\n".join(problems) + "\n" + result.output[-8000:]
    assert outcomes["passed"], result.output[-5000:]
    assert result.returncode == 0, result.output[-5000:]
