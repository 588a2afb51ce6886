"""Finding 2 and its class: special files in an image (a FIFO, a symlink loop, links to device
or host paths) never freeze the server, never block another tenant and never lead out of the
image, whatever reads or writes them: a networked run's resolv.conf, inspection, export, diff,
placed files, and the server's own shutdown.

Every attack runs inside ``LatencyProbe(hostile.bob)``: bob's listings keep answering.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server

#: Made by a kept run: a FIFO where the DNS config lives, in /root a FIFO, a symlink loop,
#: and symlinks to host device and process paths.
_SPECIAL = (
    "rm -f /etc/resolv.conf && mkfifo /etc/resolv.conf && "
    "mkfifo /root/fifo && ln -s loop /root/loop && "
    "ln -s /dev/zero /root/zero && ln -s /proc/self/mem /root/mem && "
    "ln -s /dev/sda /root/disk"
)


def _stdout(op: dict[str, Any]) -> str:
    value: str = op["metadata"]["result"]["stdout"]["value"]
    return value


def _keep(tenant: Tenant, command: str, image: str = "tag:busybox:latest") -> str:
    done = tenant.spawn(command, image=image, disposable=False)
    assert done["status"] == "SUCCESS", done
    kept: str = done["result_image_uuid"]
    return kept


@pytest.fixture(scope="module")
def special_image(hostile: HostileServer) -> str:
    """alice's kept image holding the special files of ``_SPECIAL``."""
    return _keep(hostile.alice, _SPECIAL)


def test_a_fifo_resolv_conf_does_not_freeze_the_server(
    hostile: HostileServer, special_image: str
) -> None:
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn(
            "if [ -p /etc/resolv.conf ]; then echo fifo; else cat /etc/resolv.conf; fi",
            image=special_image,
            networking={"enabled": True},
        )
    assert done["status"] == "SUCCESS", done
    out = _stdout(done)
    # With nameservers to hand out the FIFO was replaced; with none the image's stays.
    assert out.startswith("nameserver ") or out == "fifo\n", out


def test_inspecting_fifos_loops_and_device_links_answers_without_reading_them(
    hostile: HostileServer, special_image: str
) -> None:
    # User names come from the image's /etc/passwd: a FIFO there must not stall a listing.
    # (Runs from such an image only hurt themselves: crun reads it inside the sandbox.)
    no_names = _keep(hostile.alice, "rm /etc/passwd && mkfifo /etc/passwd", special_image)
    base = f"/v1/inspect/{no_names}"
    with LatencyProbe(hostile.bob), hostile.alice.client(timeout=30) as http:
        listed = http.get(f"{base}/list", params={"path": "/root"})
        etc = http.get(f"{base}/list", params={"path": "/etc"})  # user names from a FIFO
        fifo = http.get(f"{base}/download", params={"path": "/root/fifo"})
        loop = http.get(f"{base}/download", params={"path": "/root/loop"})
        devices = [
            http.get(f"{base}/download", params={"path": f"/root/{name}"})
            for name in ("zero", "mem", "disk")
        ]
        passwd = http.get(f"{base}/download", params={"path": "/etc/passwd"})
        archive = http.get(f"{base}/archive", params={"path": "/root"})
    assert listed.status_code == 200, listed.text
    by_name = {item["path"]: item for item in listed.json()["files"]}
    assert by_name["fifo"]["is_fifo"]
    assert by_name["loop"]["is_symlink"]
    assert etc.status_code == 200, etc.text
    assert fifo.status_code == 422, fifo.text
    assert passwd.status_code == 422, passwd.text
    assert loop.status_code == 400, loop.text
    for answer in devices:
        # They resolve inside the image, which has no such files: never the host's.
        assert answer.status_code == 404, answer.text
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        members = {m.name: m for m in tar}
    assert members["root/fifo"].isfifo()
    assert members["root/zero"].issym()
    assert members["root/zero"].linkname == "/dev/zero"


def test_exporting_and_diffing_an_image_with_special_files_keeps_them_as_entries(
    hostile: HostileServer, special_image: str
) -> None:
    with LatencyProbe(hostile.bob), hostile.alice.client(timeout=60) as http:
        exported = http.get(f"/v1/images/{special_image}/export")
        diff = http.get(f"/v1/images/{special_image}/diff")
    assert exported.status_code == 200, exported.text[:300]
    assert diff.status_code == 200, diff.text
    assert {"/root/fifo", "/root/loop", "/root/zero"} <= set(diff.json()["added"])
    fifos = set()
    with tarfile.open(fileobj=io.BytesIO(exported.content)) as archive:
        for member in archive:
            if not member.isfile() or not member.name.startswith("blobs/"):
                continue
            blob = archive.extractfile(member)
            assert blob is not None
            try:
                with tarfile.open(fileobj=io.BytesIO(blob.read()), mode="r:*") as layer:
                    fifos |= {m.name for m in layer if m.isfifo()}
            except tarfile.TarError:
                continue  # a config or manifest blob
    assert {"root/fifo", "etc/resolv.conf"} <= fifos


def test_a_placed_file_onto_a_fifo_or_a_host_symlink_replaces_it(
    hostile: HostileServer, special_image: str, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_bytes(b"host\n")
    host_file.chmod(0o644)
    kept = _keep(hostile.alice, f"ln -s {host_file} /root/host-link", image=special_image)
    with hostile.alice.client() as http:
        uploaded = http.post("/v1/files", content=b"placed\n")
    assert uploaded.status_code == 201, uploaded.text
    file_uuid = uploaded.json()["uuid"]
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn(
            "cat /root/fifo /root/host-link",
            image=kept,
            files={
                "/root/fifo": {"uuid": file_uuid, "mode": "0644"},
                "/root/host-link": {"uuid": file_uuid, "mode": "0644"},
            },
        )
    assert done["status"] == "SUCCESS", done
    assert _stdout(done) == "placed\nplaced\n"
    assert host_file.read_bytes() == b"host\n"


def test_a_diff_does_not_tell_whether_a_host_path_exists(
    hostile: HostileServer, tmp_path: Path
) -> None:
    # /probe -> a host directory that has "secret" but not "absent"; the child makes /probe
    # a directory with both. Looked up through the parent's symlink on the host, "secret"
    # would come out changed and "absent" added: an oracle for any host path.
    host = tmp_path / "host"
    (host / "secret").mkdir(parents=True)
    parent = _keep(hostile.alice, f"ln -s {host} /probe")
    child = _keep(hostile.alice, "rm /probe && mkdir -p /probe/secret /probe/absent", parent)
    with LatencyProbe(hostile.bob), hostile.alice.client() as http:
        diff = http.get(f"/v1/images/{child}/diff")
    assert diff.status_code == 200, diff.text
    assert {"/probe/secret", "/probe/absent"} <= set(diff.json()["added"])
    assert "/probe/secret" not in diff.json()["changed"]


def test_sigterm_stops_the_server_while_a_networked_run_from_a_fifo_image_runs(
    tmp_path: Path, busybox_rootfs: Path
) -> None:
    with start_hostile_server(tmp_path, busybox_rootfs) as srv:
        kept = _keep(srv.alice, _SPECIAL)
        with srv.alice.client() as http:
            started = http.post(
                "/v1/instances",
                json={"command": "sleep 60", "shell": True, "image": kept, "timeout": 90,
                      "networking": {"enabled": True}},
            )  # fmt: skip
            assert started.status_code == 201, started.text
            op_id = started.json()["uuid"]
            _wait_for_status(http, op_id, "EXECUTING")
        # ServerProcess.stop fails if the server is still there after its deadline.
        assert srv.server.stop(), "".join(srv.server.output[-20:])
    assert srv.server.process.returncode is not None


def _wait_for_status(http: httpx.Client, op_id: str, wanted: str, within: float = 60) -> None:
    end = time.monotonic() + within
    while (status := http.get(f"/v1/operations/{op_id}").json()["status"]) != wanted:
        assert status in ("PENDING", "ASSIGNED", wanted), status
        assert time.monotonic() < end, f"operation {op_id} still {status}"
        time.sleep(0.1)
