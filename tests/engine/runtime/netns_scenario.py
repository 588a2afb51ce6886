"""A network pool's whole life inside a scratch network namespace, on a chosen iptables backend.

Run by ``test_firewall_backends.py`` as ``ip netns exec <scratch> python3 netns_scenario.py
<iptables> <prefix> <subnet> [<foreign backend>]``: ``ip netns exec`` gives this process the
scratch netns and a /sys of it, so the pool's rules, veths and sysctls never reach the host's
own netns. With a foreign backend, that backend first gets ACCEPT rules at the top of INPUT
and FORWARD (another tool on the other backend), to show they do not open what the pool drops.

Prints one JSON object: the detected backend, its warning, what each probe from a sandbox got
(the peer address a server saw, or null when connecting failed) and the pool's rules left
after teardown.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandtree.engine.runtime._network import NetworkLease, NetworkPool
from sandtree.testing import simulated_internet

# Answers each connection with the peer's address; prints READY once it listens.
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("READY", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\n")
    c.close()
"""

# Connects to host:port; prints the line the server sent, or null if connecting failed.
CLIENT = r"""
import json, socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        print(json.dumps(c.makefile().readline().strip() or "connected"))
except OSError:
    print("null")
"""


def serve(prefix: list[str], bind: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", SERVER, bind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    # Blocks until the server listens (or exits, which then fails the probes it serves).
    proc.stdout.readline()
    return proc


def probe(lease: NetworkLease, host: str, port: int) -> str | None:
    done = subprocess.run(
        ["nsenter", f"--net={lease.netns_path}", sys.executable, "-c", CLIENT, host, str(port)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    result: str | None = json.loads(done.stdout)
    return result


def host_service() -> tuple[socket.socket, int]:
    """A service of the (scratch) host on every address, answering with the peer address."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)

    def answer() -> None:
        while True:
            try:
                conn, peer = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(peer[0].encode() + b"\n")

    threading.Thread(target=answer, daemon=True).start()
    return sock, sock.getsockname()[1]


def main(iptables: str, prefix: str, subnet: str, foreign: str | None) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if foreign is not None:
        for hook in ("INPUT", "FORWARD"):
            subprocess.run([foreign, "-w", "-I", hook, "1", "-j", "ACCEPT"], check=True)
    servers: list[subprocess.Popen[str]] = []
    report: dict[str, object] = {}
    with simulated_internet(private_net="10.214") as net, tempfile.TemporaryDirectory() as tmp:
        resolv = Path(tmp) / "resolv.conf"
        resolv.write_text(f"nameserver {net.private}\n")
        pool = NetworkPool(prefix=prefix, subnet=subnet, iptables=iptables, resolv_conf=str(resolv))
        try:
            pool.cleanup_stale()
            pool.setup()
            assert pool.firewall.backend is not None
            report["backend"] = dataclasses.asdict(pool.firewall.backend)
            report["warning"] = pool.firewall.backend.warning()
            inet = ["ip", "netns", "exec", net.netns]
            servers += [serve(inet, "0.0.0.0", 8080)]
            a, b = pool.lease(), pool.lease()
            servers += [serve(["nsenter", f"--net={b.netns_path}"], "0.0.0.0", 8080)]
            sock, port = host_service()
            b_addr = b.address.split("/")[0]
            report["host_side"] = net.host_side
            report["b_address"] = b_addr
            targets = {
                "internet": (a, net.server, 8080),
                "private": (a, net.private, 8080),
                "gateway": (a, a.gateway, port),
                "host uplink": (a, net.host_side, port),
                "other sandbox": (a, b_addr, 8080),
                "other sandbox, from itself": (b, b_addr, 8080),
            }
            # In parallel: each dropped connection waits out the client's timeout.
            with ThreadPoolExecutor(len(targets)) as workers:
                futures = {k: workers.submit(probe, *t) for k, t in targets.items()}
                report["probes"] = {k: f.result() for k, f in futures.items()}
            sock.close()
            pool.release(a)
            pool.release(b)
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
            pool.teardown()
        saved = subprocess.run(
            [f"{iptables}-save"], capture_output=True, text=True, check=True
        ).stdout
        report["left"] = [line for line in saved.splitlines() if f"SANDTREE-{prefix}" in line]
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
