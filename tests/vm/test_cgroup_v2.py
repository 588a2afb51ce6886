"""cgroup v2 on the stock host (Debian 12 in the VM: Linux 6.1, systemd, the unified
hierarchy), with sandtree under a systemd unit that has ``Delegate=yes``: the server moves
itself into ``<unit>/server``, hands memory, pids and cpu down to its sandboxes, each sandbox
is ``<unit>/<sandbox id>`` with its limits, its limits end runs by name, and nothing is left
once a run ends. (Outside a delegated unit, as the isolation suite runs in the VM, sandboxes
go to ``/sys/fs/cgroup/sandtree``: ``test_stock_host.py`` runs that suite.)

One boot runs the whole story (``SCRIPT``); each test checks one part of what it recorded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .kit import VmImage, VmResult, run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(3600)]

UNIT = "sandtree-cg"
SERVICE = f"/sys/fs/cgroup/system.slice/{UNIT}.service"

#: Drives the server's API and reads the cgroup tree while a run is inside it; prints one
#: JSON object. Every wait polls with a deadline (TCG is slow, so they are generous).
DRIVER = r"""
import json, os, time
from pathlib import Path
import httpx

DATA = Path("/var/lib/sandtree-cg")
SERVICE = Path("{service}")
DEADLINE = 600.0

def until(what, check):
    end = time.monotonic() + DEADLINE
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise SystemExit(f"{what}: not within {DEADLINE}s")
        time.sleep(0.2)

def read(path):
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        return f"<{exc.strerror}>"

token = until("admin token", lambda: (DATA / "admin-token").exists()
              and (DATA / "admin-token").read_text().strip())
http = httpx.Client(base_url="http://127.0.0.1:9461",
                    headers={"Authorization": f"Bearer {token}"}, timeout=60)

def up():
    try:
        return http.get("/v1/whoami").status_code == 200
    except httpx.TransportError:
        return False

until("whoami", up)
whoami = http.get("/v1/whoami").json()

def run(command, **extra):
    made = http.post("/v1/instances", json={"command": command, "image": "tag:busybox:latest",
                                            "shell": True, **extra})
    made.raise_for_status()
    return made.json()["uuid"]

def op(op_id, statuses):
    return until(f"operation {op_id} in {statuses}", lambda: (
        o := http.get(f"/v1/operations/{op_id}").json())["status"] in statuses and o)

DONE = ("SUCCESS", "FAILED", "CANCELLED")
long_id = run("cat /proc/self/cgroup > /tmp/cg; sleep 300", timeout=600)
op(long_id, ("EXECUTING",))
sandbox = SERVICE / f"st-{long_id}"
until("the sandbox's cgroup", lambda: sandbox.is_dir() and read(sandbox / "cgroup.procs"))
inside = {
    "service_dirs": sorted(p.name for p in SERVICE.iterdir() if p.is_dir()),
    "service_procs": read(SERVICE / "cgroup.procs"),
    "server_procs": read(SERVICE / "server" / "cgroup.procs").split(),
    "subtree_control": read(SERVICE / "cgroup.subtree_control").split(),
    "limits": {name: read(sandbox / name)
               for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.max")},
    "sandbox_procs": len(read(sandbox / "cgroup.procs").split()),
}
http.delete(f"/v1/operations/{long_id}")
cancelled = op(long_id, DONE)
until("the sandbox's cgroup removed", lambda: not sandbox.exists())
bomb = op(run("f(){ f|f & }; f; sleep 5", timeout=120), DONE)
hog = op(run("dd if=/dev/zero bs=300M count=1 of=/dev/null", timeout=120), DONE)
ok = op(run("echo fine"), DONE)
left = sorted(p.name for p in SERVICE.iterdir() if p.is_dir())
print(json.dumps({"long_id": long_id, "whoami": whoami, "inside": inside,
                  "cancelled": cancelled["status"], "bomb": bomb, "hog": hog, "ok": ok,
                  "left": left}))
""".replace("{service}", SERVICE)

SCRIPT = r"""
set -u
out=$SANDTREE_VM_OUT
cat > /var/tmp/drive.py <<'DRIVER_EOF'
{driver}
DRIVER_EOF
python3 - <<'EOF' > $out/import.log 2>&1
import anyio
from pathlib import Path
from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import build_busybox_rootfs
settings = Settings(data_dir=Path("/var/lib/sandtree-cg"))
rootfs = build_busybox_rootfs(Path("/var/tmp/busybox-rootfs"))
async def main():
    async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
        await engine.import_local(rootfs, tag="busybox:latest")
anyio.run(main)
EOF
systemd-run --unit={unit} -p Delegate=yes --setenv=HOME=/root \
    --setenv=SANDTREE_PIDS_LIMIT=48 --setenv=SANDTREE_MEMORY_LIMIT_BYTES=134217728 \
    /usr/local/bin/sandtree serve --data-dir /var/lib/sandtree-cg --port 9461 \
    > $out/systemd-run.log 2>&1
python3 /var/tmp/drive.py > $out/drive.json 2> $out/drive.err
systemctl stop {unit}
journalctl -u {unit} --no-pager -o cat > $out/journal.log
"""


@pytest.fixture(scope="module")
def story(vm_image: VmImage) -> VmResult:
    script = SCRIPT.replace("{driver}", DRIVER).replace("{unit}", UNIT)
    result = run_in_vm(script, timeout=2400)
    print(f"cgroup v2 story: {result.boot_seconds:.1f}s to the job, job {result.job_seconds:.1f}s")
    return result


def _text(story: VmResult, name: str) -> str:
    return story.files.get(name, b"").decode(errors="replace").strip()


@pytest.fixture(scope="module")
def drive(story: VmResult) -> dict[str, Any]:
    text = _text(story, "drive.json")
    assert text, (
        f"{_text(story, 'drive.err')}\n{_text(story, 'journal.log')[-3000:]}\n"
        f"{_text(story, 'import.log')[-2000:]}\n{story.output[-2000:]}"
    )
    found: dict[str, Any] = json.loads(text)
    return found


def test_the_startup_line_and_whoami_say_cgroup_v2_and_where_sandboxes_live(
    story: VmResult, drive: dict[str, Any]
) -> None:
    journal = _text(story, "journal.log")

    assert drive["whoami"]["cgroup_mode"] == "v2"
    assert f"cgroup v2 (unified), controllers memory pids cpu, sandboxes in {SERVICE}" in journal, (
        journal[-3000:]
    )


def test_under_a_delegated_unit_the_server_moves_into_a_leaf_beside_its_sandboxes(
    drive: dict[str, Any],
) -> None:
    inside = drive["inside"]

    # v2's no-internal-processes rule: the unit's own cgroup holds no process, only cgroups.
    assert inside["service_procs"] == ""
    assert inside["server_procs"] != []
    assert {"memory", "pids", "cpu"} <= set(inside["subtree_control"])
    assert inside["service_dirs"] == sorted(["server", f"st-{drive['long_id']}"])


def test_each_sandbox_cgroup_carries_its_limits_and_holds_the_sandbox_s_processes(
    drive: dict[str, Any],
) -> None:
    limits = drive["inside"]["limits"]

    assert limits["memory.max"] == str(128 * 1024 * 1024)
    assert limits["pids.max"] == "48"
    assert limits["memory.swap.max"] in ("0", "<No such file or directory>")
    assert limits["cpu.max"].endswith(" 100000")
    assert drive["inside"]["sandbox_procs"] >= 1


def test_limits_end_runs_by_name_and_a_normal_run_follows(drive: dict[str, Any]) -> None:
    bomb, hog, ok = drive["bomb"], drive["hog"], drive["ok"]

    assert bomb["status"] == "FAILED", bomb
    assert "process limit (48 processes)" in bomb["error"]
    assert hog["status"] == "FAILED", hog
    assert f"out of memory (limit {128 * 1024 * 1024} bytes)" in hog["error"]
    assert ok["status"] == "SUCCESS", ok
    assert ok["metadata"]["result"]["stdout"]["value"] == "fine\n"


def test_an_ended_sandbox_leaves_no_cgroup_in_the_unit(drive: dict[str, Any]) -> None:
    assert drive["cancelled"] == "CANCELLED"
    assert drive["left"] == ["server"]
