"""sandtree as a systemd service on the stock host (Debian 12 in the VM: its 6.1 kernel,
systemd, cgroup v2): ``sandtree install-service``, a run through the service's API,
``systemctl stop`` ending the sandboxes and leaving no mount or process behind, a restart that
keeps everything acknowledged, and ``sandtree doctor`` all ok.

One boot runs the whole story (``SERVICE_SCRIPT``); the tests below each check one part of
what it recorded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .kit import VmImage, VmResult, run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(3600)]

#: The API client the guest runs (the venv's python3 has httpx): each phase prints one JSON
#: object. Every wait polls with a deadline; TCG is slow, so they are generous.
DRIVER = r"""
import json, sys, time
from pathlib import Path
import httpx

URL = "http://127.0.0.1:9450"
DEADLINE = 600.0

def token():
    path = Path("/var/lib/sandtree/admin-token")
    end = time.monotonic() + DEADLINE
    while not path.exists():
        if time.monotonic() > end:
            raise SystemExit("no admin token after the deadline")
        time.sleep(0.5)
    return path.read_text().strip()

def client():
    http = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {token()}"},
                        timeout=60)
    end = time.monotonic() + DEADLINE
    while True:
        try:
            if http.get("/v1/whoami").status_code == 200:
                return http
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            raise SystemExit("the service did not answer /v1/whoami before the deadline")
        time.sleep(0.5)

def operation(http, op_id, until):
    end = time.monotonic() + DEADLINE
    while True:
        op = http.get(f"/v1/operations/{op_id}").json()
        if op["status"] in until or time.monotonic() > end:
            return op
        time.sleep(0.5)

def run(http, command, image, **extra):
    created = http.post("/v1/instances", json={"command": command, "image": image,
                                               "shell": True, **extra})
    created.raise_for_status()
    return created.json()["uuid"]

DONE = ("SUCCESS", "FAILED", "CANCELLED")
http = client()
if sys.argv[1] == "before-stop":
    kept = operation(http, run(http, "echo kept > /root/kept; echo hi", "tag:busybox:latest",
                               disposable=False), DONE)
    tagged = None
    if kept.get("result_image_uuid"):
        tagged = http.patch(f"/v1/images/{kept['result_image_uuid']}/tag",
                            json={"tag": "kept:1"}).status_code
    long_id = run(http, "sleep 300", "tag:busybox:latest", timeout=600)
    running = operation(http, long_id, ("EXECUTING", *DONE))
    print(json.dumps({"kept": kept, "tagged": tagged, "long": running}))
else:
    long_op = operation(http, sys.argv[2], DONE + ("PENDING", "ASSIGNED", "EXECUTING"))
    images = http.get("/v1/images", params={"tag": "kept:1"}).json()
    again = operation(http, run(http, "cat /root/kept", "tag:kept:1"), DONE)
    print(json.dumps({"long": long_op, "images": images, "again": again}))
"""

SERVICE_SCRIPT = r"""
set -u
out=$SANDTREE_VM_OUT
cat > /var/tmp/drive.py <<'DRIVER_EOF'
{driver}
DRIVER_EOF
sandtree doctor --json --data-dir /var/lib/sandtree > $out/doctor-before.json
# busybox:latest in the service's store before it starts, as the host tests' fixtures do.
python3 - <<'EOF' > $out/import.log 2>&1
import anyio
from pathlib import Path
from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import build_busybox_rootfs
settings = Settings(data_dir=Path("/var/lib/sandtree"))
rootfs = build_busybox_rootfs(Path("/var/tmp/busybox-rootfs"))
async def main():
    async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
        await engine.import_local(rootfs, tag="busybox:latest")
anyio.run(main)
EOF
sandtree install-service > $out/install.log 2>&1; echo $? > $out/install.rc
systemctl is-enabled sandtree > $out/is-enabled 2>&1
if [ "$(cat $out/install.rc)" != 0 ]; then exit 0; fi  # the tests say why from install.log
python3 /var/tmp/drive.py before-stop > $out/before-stop.json 2> $out/before-stop.err
systemctl show sandtree -p Delegate -p KillMode -p TimeoutStopUSec -p ActiveState \
    -p ControlGroup > $out/show-running
cgroup=$(systemctl show sandtree -p ControlGroup --value)
main_pid=$(systemctl show sandtree -p MainPID --value)
grep -c ' - overlay ' /proc/$main_pid/mountinfo > $out/overlays-while-running
start=$SECONDS
systemctl stop sandtree; echo $? > $out/stop.rc
echo $((SECONDS - start)) > $out/stop-seconds
systemctl show sandtree -p Result -p ActiveState > $out/show-stopped
# After the stop: no overlay mounted in any process's view, no sandbox process, no cgroup.
cat /proc/[0-9]*/mountinfo 2>/dev/null | grep -c ' - overlay ' > $out/overlays-after-stop
pgrep -a -f 'sleep 300|crun|runsc' > $out/procs-after-stop
test -e "/sys/fs/cgroup$cgroup"; echo $? > $out/cgroup-gone
systemctl start sandtree
long_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["long"]["uuid"])' \
    $out/before-stop.json)
python3 /var/tmp/drive.py after-restart "$long_id" > $out/after-restart.json \
    2> $out/after-restart.err
sandtree doctor --json --data-dir /var/lib/sandtree > $out/doctor-after.json
journalctl -u sandtree --no-pager -o cat > $out/journal.log
"""


@pytest.fixture(scope="module")
def story(vm_image: VmImage) -> VmResult:
    result = run_in_vm(SERVICE_SCRIPT.replace("{driver}", DRIVER), timeout=2400)
    print(f"service story: {result.boot_seconds:.1f}s to the job, job {result.job_seconds:.1f}s")
    return result


def _text(story: VmResult, name: str) -> str:
    return story.files.get(name, b"").decode(errors="replace").strip()


def _json(story: VmResult, name: str) -> Any:
    text = _text(story, name)
    assert text, (
        f"{name} is empty: {_text(story, name.replace('.json', '.err'))}\n" + (story.output[-3000:])
    )
    return json.loads(text)


def _props(story: VmResult, name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in _text(story, name).splitlines() if "=" in line)


def _statuses(report: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["status"] for f in report["findings"]}


def test_doctor_finds_the_stock_debian_12_host_all_ok(story: VmResult) -> None:
    for name in ("doctor-before.json", "doctor-after.json"):
        report = _json(story, name)
        details = {f["name"]: f["detail"] for f in report["findings"]}
        print(f"{name}: " + "; ".join(f"{k}: {v}" for k, v in details.items()))
        assert report["ready"] is True
        assert set(_statuses(report).values()) == {"ok"}, report["findings"]
        assert details["kernel"].startswith("Linux 6.1.")
        assert details["cgroups"].startswith("cgroup v2 (unified), controllers memory pids cpu")
        assert details["overlay-layers"].startswith("legacy mount(2) path")
        assert "nf_tables backend" in details["iptables"]


def test_install_service_starts_and_enables_a_delegated_unit(story: VmResult) -> None:
    running = _props(story, "show-running")

    assert _text(story, "install.rc") == "0", _text(story, "install.log")
    assert "sandtree is running and starts at boot" in _text(story, "install.log")
    assert _text(story, "is-enabled") == "enabled"
    assert running["ActiveState"] == "active"
    assert running["Delegate"] == "yes"
    assert running["KillMode"] == "mixed"
    assert running["ControlGroup"] == "/system.slice/sandtree.service"


def test_a_run_through_the_service_s_api_keeps_its_image(story: VmResult) -> None:
    before = _json(story, "before-stop.json")
    kept = before["kept"]

    assert kept["status"] == "SUCCESS", kept
    assert kept["metadata"]["result"]["stdout"]["value"] == "hi\n"
    assert kept["result_image_uuid"] not in (None, kept["image_uuid"])
    assert before["tagged"] == 200
    assert before["long"]["status"] == "EXECUTING", before["long"]


def test_systemctl_stop_ends_the_sandboxes_and_leaves_no_mount_or_process(
    story: VmResult,
) -> None:
    stopped = _props(story, "show-stopped")
    journal = _text(story, "journal.log")

    print(f"systemctl stop took {_text(story, 'stop-seconds')} s (whole seconds, under TCG)")
    assert int(_text(story, "overlays-while-running")) > 0  # the check below can see mounts
    assert _text(story, "stop.rc") == "0"
    # "success", not "timeout": the server stopped itself before systemd's SIGKILL.
    assert stopped == {"Result": "success", "ActiveState": "inactive"}
    assert "Application shutdown complete" in journal
    assert _text(story, "overlays-after-stop") == "0"
    assert _text(story, "procs-after-stop") == ""
    assert _text(story, "cgroup-gone") == "1"


def test_a_restart_keeps_what_was_acknowledged_and_leaves_nothing_executing(
    story: VmResult,
) -> None:
    before = _json(story, "before-stop.json")
    after = _json(story, "after-restart.json")

    assert after["long"]["status"] in ("FAILED", "CANCELLED"), after["long"]
    assert [image["uuid"] for image in after["images"]["images"]] == [
        before["kept"]["result_image_uuid"]
    ]
    assert after["again"]["status"] == "SUCCESS", after["again"]
    assert after["again"]["metadata"]["result"]["stdout"]["value"] == "kept\n"
