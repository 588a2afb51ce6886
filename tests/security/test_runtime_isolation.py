"""Finding 7 and the runtime's siblings, each as the attack against a real server on crun.

* Finding 7: every server used the network prefix ``st``, so a second server on the host
  (a test server, the embedded one the CLI starts) deleted the first one's iptables chains
  when it stopped, and the first one's sandboxes then reached host services.
* The seccomp deny-list let ``io_uring_setup``, ``modify_ldt``, ``personality`` and AF_VSOCK
  sockets through.
* 20,000 empty directories took 79 MB under a 1 MiB ``max_layer_bytes``.
* inotify instances were charged to host root with no cap per sandbox.
* A networked sandbox listed the host's interfaces in ``/sys/class/net``; ``/proc/self/cgroup``
  showed the host's cgroup paths.

Network-safety: the only listeners are on this host's own addresses (which must stay
unreachable); no traffic leaves the host.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.testing import ServerProcess

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server

# Prints NAME=ok or NAME=<errno name> for each attempt (a static binary: busybox has no
# compiler, and none of these calls has a shell command).
_PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <unistd.h>
static void report(const char *name, long rc) {
    printf("%s=%s\n", name, rc < 0 ? strerrorname_np(errno) : "ok");
}
int main(int argc, char **argv) {
    if (argc > 1) {  /* inotify: how many instances can this sandbox make? */
        int n = 0;
        while (n < 100000 && inotify_init1(IN_CLOEXEC) >= 0) n++;
        printf("inotify=%d\n", n);
        return 0;
    }
    char params[120] = {0};  /* struct io_uring_params */
    char ldt[16] = {0};
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    report("modify_ldt", syscall(SYS_modify_ldt, 0, ldt, sizeof ldt));
    report("personality_read_implies_exec", syscall(SYS_personality, 0x0400000));
    report("socket_vsock", syscall(SYS_socket, 40 /* AF_VSOCK */, 1, 0));
    report("socket_packet", syscall(SYS_socket, 17 /* AF_PACKET */, 3, 0));
    report("socket_alg", syscall(SYS_socket, 38 /* AF_ALG */, 5, 0));
    report("unshare_user", syscall(SYS_unshare, 0x10000000));
    report("socket_unix", syscall(SYS_socket, 1, 1, 0));
    report("socket_inet", syscall(SYS_socket, 2, 2, 0));
    report("personality_query", syscall(SYS_personality, 0xffffffff));
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("the syscall probe is compiled at test time and needs gcc")
    work = tmp_path_factory.mktemp("probe")
    (work / "probe.c").write_text(_PROBE_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(work / "probe"), str(work / "probe.c")],
                   check=True, capture_output=True)  # fmt: skip
    return (work / "probe").read_bytes()


def _stdout(op: dict[str, Any]) -> str:
    value: str = op["metadata"]["result"]["stdout"]["value"]
    return value


def _results(op: dict[str, Any]) -> dict[str, str]:
    assert op["status"] == "SUCCESS", op
    return dict(line.split("=", 1) for line in _stdout(op).splitlines() if "=" in line)


def _upload(tenant: Tenant, data: bytes) -> str:
    with tenant.client() as http:
        answer = http.post("/v1/files", content=data)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["uuid"])


def _run_probe(tenant: Tenant, binary: bytes, *args: str, **fields: Any) -> dict[str, str]:
    placed = {"/probe": {"uuid": _upload(tenant, binary), "mode": "0755"}}
    return _results(tenant.spawn(" ".join(["/probe", *args]), files=placed, **fields))


def _pool(server: HostileServer) -> dict[str, str]:
    record: dict[str, str] = json.loads((server.data_dir / "network.json").read_text())
    return record


def _ruleset() -> str:
    return subprocess.run(["iptables-save"], check=True, capture_output=True, text=True).stdout


def _host_addresses() -> list[str]:
    links = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], check=True,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    return [a["local"] for link in links for a in link.get("addr_info", []) if "local" in a]


@pytest.fixture
def host_service() -> Iterator[tuple[socket.socket, int]]:
    """A TCP service on every host address; a sandbox must never get a connection in."""
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        yield server, server.getsockname()[1]


def _reach_host(tenant: Tenant, port: int) -> dict[str, str]:
    """From a networked sandbox, try the gateway and every host address on ``port``."""
    command = (
        "gw=$(ip route | awk '/default/ {print $3}'); echo gw=$gw;"
        f" nc -w 2 $gw {port} </dev/null && echo reached=$gw;"
        f" for a in $HOST_ADDRS; do nc -w 2 $a {port} </dev/null && echo reached=$a; done;"
        " echo done=1"
    )
    done = tenant.spawn(command, networking={"enabled": True}, timeout=60,
                        env={"HOST_ADDRS": " ".join(_host_addresses())})  # fmt: skip
    return _results(done)


def _assert_cut_off(probes: dict[str, str], service: socket.socket) -> None:
    assert probes["gw"], probes
    assert probes["done"] == "1", probes
    assert "reached" not in probes, probes
    # Not even a connection waiting in the backlog got through.
    assert select.select([service], [], [], 0) == ([], [], [])


# -- finding 7: one server per data dir, and none touches another's network ---------------------


def test_a_second_server_stopping_leaves_the_first_ones_sandboxes_cut_off_from_the_host(
    hostile: HostileServer,
    tmp_path: Path,
    busybox_rootfs: Path,
    host_service: tuple[socket.socket, int],
) -> None:
    service, port = host_service
    mine = _pool(hostile)
    with start_hostile_server(tmp_path, busybox_rootfs) as other:
        theirs = _pool(other)
        used = other.alice.spawn("true", networking={"enabled": True})
        assert used["status"] == "SUCCESS", used
    # The second server has stopped, which tore its own network pool down.

    with LatencyProbe(hostile.bob):
        probes = _reach_host(hostile.alice, port)

    assert (theirs["prefix"], theirs["subnet"]) != (mine["prefix"], mine["subnet"])
    assert f":SANDTREE-{theirs['prefix']}-FWD" not in _ruleset()
    assert f"-A FORWARD -j SANDTREE-{mine['prefix']}-FWD" in _ruleset()
    _assert_cut_off(probes, service)


def test_a_second_server_on_the_same_data_dir_refuses_to_start(
    hostile: HostileServer, tmp_path: Path
) -> None:
    rules_before = [r for r in _ruleset().splitlines() if _pool(hostile)["prefix"] in r]

    with LatencyProbe(hostile.bob):
        second = ServerProcess(hostile.data_dir, tmp_path / "config")
        with pytest.raises(AssertionError, match="exited before it was ready"):
            second.wait_until_ready()
        second.stop()

    assert "another sandtree server" in "".join(second.output)
    assert "--data-dir" in "".join(second.output)
    assert [r for r in _ruleset().splitlines() if _pool(hostile)["prefix"] in r] == rules_before
    done = hostile.alice.spawn("echo still-here", networking={"enabled": True})
    assert _stdout(done) == "still-here\n"


def test_a_firewall_another_process_deleted_is_restored_before_the_next_networked_run(
    hostile: HostileServer, host_service: tuple[socket.socket, int]
) -> None:
    service, port = host_service
    prefix = _pool(hostile)["prefix"]
    # What an old server sharing the prefix did on its way out, or any other tool.
    for argv in (
        ["iptables", "-w", "-D", "FORWARD", "-j", f"SANDTREE-{prefix}-FWD"],
        ["iptables", "-w", "-D", "INPUT", "-j", f"SANDTREE-{prefix}-IN"],
        ["iptables", "-w", "-F", f"SANDTREE-{prefix}-IN"],
    ):
        subprocess.run(argv, check=True, capture_output=True)

    with LatencyProbe(hostile.bob):
        probes = _reach_host(hostile.alice, port)

    _assert_cut_off(probes, service)
    rules = _ruleset()
    assert f"-A FORWARD -j SANDTREE-{prefix}-FWD" in rules
    assert f"-A INPUT -j SANDTREE-{prefix}-IN" in rules


# -- seccomp: an allow-list ---------------------------------------------------------------------


@pytest.mark.parametrize("networking", [False, True], ids=["offline", "online"])
def test_kernel_attack_surface_syscalls_fail_with_eperm(
    hostile: HostileServer, probe_binary: bytes, networking: bool
) -> None:
    with LatencyProbe(hostile.bob):
        found = _run_probe(hostile.alice, probe_binary, networking={"enabled": networking})

    refused = ("io_uring_setup", "modify_ldt", "personality_read_implies_exec", "socket_vsock",
               "socket_packet", "socket_alg", "unshare_user")  # fmt: skip
    assert {name: found[name] for name in refused} == dict.fromkeys(refused, "EPERM")
    # What programs need still works: the filter is not refusing everything.
    assert (found["socket_unix"], found["socket_inet"], found["personality_query"]) == (
        "ok",
        "ok",
        "ok",
    )


@pytest.mark.gvisor
def test_the_same_syscalls_fail_under_gvisor(hostile: HostileServer, probe_binary: bytes) -> None:
    if shutil.which("runsc") is None:
        pytest.skip("gVisor (runsc) is not installed")
    with LatencyProbe(hostile.bob):
        found = _run_probe(hostile.alice, probe_binary, isolation="gvisor", timeout=60)

    for name in ("io_uring_setup", "modify_ldt", "personality_read_implies_exec",
                 "socket_vsock", "socket_packet", "unshare_user"):  # fmt: skip
        assert found[name] != "ok", (name, found)
    assert found["socket_unix"] == "ok"


# -- inotify: a cap per sandbox -----------------------------------------------------------------


def test_one_sandbox_cannot_take_every_inotify_instance_of_host_root(
    hostile: HostileServer, probe_binary: bytes
) -> None:
    with LatencyProbe(hostile.bob):
        greedy = _run_probe(hostile.alice, probe_binary, "inotify")
        raise_cap = hostile.alice.spawn(
            "echo 100000 > /proc/sys/user/max_inotify_instances; "
            "cat /proc/sys/user/max_inotify_instances"
        )

    cap = int(_stdout(raise_cap).split()[-1])
    assert int(greedy["inotify"]) == cap
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    assert cap * 8 <= limit - 128  # a full worker pool of them still leaves host root its own


# -- the writable layer's cap counts what it costs ----------------------------------------------


def test_twenty_thousand_directories_end_the_run_at_a_one_mib_cap(hostile: HostileServer) -> None:
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn(
            "i=0; while [ $i -lt 20000 ]; do mkdir /d$i; i=$((i+1)); done; echo made-all",
            resources_limits={"max_layer_bytes": 1024 * 1024},
            timeout=120,
        )

    assert done["status"] == "FAILED", done
    assert done["metadata"]["result"]["limit_hit"] == "disk"
    assert "max_layer_bytes" in done["error"]


def test_hard_links_and_sparse_files_do_not_slip_past_the_cap(hostile: HostileServer) -> None:
    with LatencyProbe(hostile.bob):
        sparse = hostile.alice.spawn(
            "truncate -s 900K /a; truncate -s 900K /b; echo wrote",
            resources_limits={"max_layer_bytes": 1024 * 1024},
        )
        links = hostile.alice.spawn(
            "echo x > /f; i=0; while [ $i -lt 5000 ]; do ln /f /l$i; i=$((i+1)); done",
            resources_limits={"max_layer_bytes": 1024 * 1024},
            timeout=120,
        )

    for done in (sparse, links):
        assert done["status"] == "FAILED", done
        assert done["metadata"]["result"]["limit_hit"] == "disk"


# -- what a sandbox sees of the host ------------------------------------------------------------


def test_a_networked_sandbox_lists_only_its_own_interfaces(hostile: HostileServer) -> None:
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn("ls /sys/class/net", networking={"enabled": True})

    assert sorted(_stdout(done).split()) == ["eth0", "lo"]


def test_no_host_cgroup_path_nor_host_interface_is_readable_in_a_sandbox(
    hostile: HostileServer,
) -> None:
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn(
            "cat /proc/self/cgroup; ls /sys/class/net /sys/fs/cgroup 2>/dev/null; "
            "cat /proc/interrupts 2>/dev/null | head -3",
            networking={"enabled": True},
        )

    out = _stdout(done)
    assert done["status"] == "SUCCESS", done
    assert "sandtree" not in out  # the cgroup paths were /sandtree/st-<op>
    assert all(line.endswith(":/") for line in out.splitlines() if line[:1].isdigit())
    host_only = {p.name for p in Path("/sys/class/net").iterdir()} - {"lo", "eth0"}
    assert host_only  # the host has interfaces a sandbox must not see (this pool's veths)
    assert not host_only & set(out.split())
    assert "CPU0" not in out  # /proc/interrupts is masked


@pytest.mark.parametrize("networking", [False, True], ids=["offline", "online"])
def test_no_host_data_dir_path_is_readable_in_a_sandbox(
    hostile: HostileServer, networking: bool
) -> None:
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn(
            "cat /proc/self/mountinfo /proc/mounts /proc/self/cgroup; env; pwd",
            networking={"enabled": networking},
        )

    out = _stdout(done)
    assert " / / " in out  # the root mount was listed: the scan is not of nothing
    assert str(hostile.data_dir) not in out
    assert str(hostile.data_dir.parent) not in out
