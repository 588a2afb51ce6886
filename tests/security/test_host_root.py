"""Finding 1 and its siblings: host root through a file a tenant places or imports, and a data
dir other local accounts can read.

Layers keep owners shifted by ``uid_shift`` (sandbox 0 is host 100000). An owner id the
sandbox does not have, shifted without a check, is a host id of its own: ``-100000`` is host
root, so a placed ``04755`` file "owned by -100000" was a setuid-root binary on the host,
runnable by any local account through the run dirs (0755). Every attack here runs against a
real server on crun with a second tenant probing its latency.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.config import Settings
from sandtree.testing_registry import Entry, ScriptedRegistry, layer_tar

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server, wait_until

#: Owners that are no sandbox id: host root after the shift, just past the range, past 32 bits.
_ALIEN_OWNERS = [
    {"uid": -100000, "gid": -100000},
    {"uid": 0, "gid": -100000},
    {"uid": 70000, "gid": 0},
    {"uid": 0, "gid": 2**32},
]
_NOBODY = 65534


def _shift(server: HostileServer) -> int:
    return Settings(data_dir=server.data_dir).uid_shift


def _upload(tenant: Tenant, data: bytes) -> str:
    with tenant.client() as http:
        answer = http.post("/v1/files", content=data)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["uuid"])


def _image_content(data_dir: Path) -> Iterator[Path]:
    """Every entry of every layer and every run's upper: what runs and images are made of."""
    store = data_dir / "store"
    for top in [*(store / "layers").iterdir(), *(store / "runs").glob("*/upper")]:
        yield top
        yield from top.rglob("*")


def _owned_outside_the_sandbox(data_dir: Path, shift: int) -> list[str]:
    """Image content whose host owner is not a shifted sandbox id."""
    bad = []
    for path in _image_content(data_dir):
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # a run's upper removed while we walk
            continue
        if not (shift <= st.st_uid < shift + 65536 and shift <= st.st_gid < shift + 65536):
            bad.append(f"{path} ({st.st_uid}:{st.st_gid})")
    return bad


def _setid_below(data_dir: Path, shift: int) -> list[str]:
    """Setuid/setgid entries anywhere in the data dir owned by a host id below the shift (the
    server's own structure is root's, but never setuid)."""
    bad = []
    for path in [data_dir, *data_dir.rglob("*")]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        setid = st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(st.st_mode)
        if setid and (st.st_uid < shift or st.st_gid < shift):
            bad.append(f"{path} ({st.st_uid}:{st.st_gid} {st.st_mode:o})")
    return bad


def _spawn_body(**fields: Any) -> dict[str, Any]:
    return {"command": "true", "image": "tag:busybox:latest", "shell": True, **fields}


@pytest.mark.parametrize("owner", _ALIEN_OWNERS, ids=lambda o: f"{o['uid']}:{o['gid']}")
def test_a_setuid_placed_file_owned_by_an_id_outside_the_sandbox_is_refused(
    hostile: HostileServer, owner: dict[str, int]
) -> None:
    file_id = _upload(hostile.alice, b"#!/bin/sh\nexec /bin/sh\n")
    files = {"/bin/rootme": {"uuid": file_id, "mode": "04755", **owner}}

    with LatencyProbe(hostile.bob), hostile.alice.client() as http:
        kept = http.post("/v1/instances", json=_spawn_body(files=files, disposable=False))
        thrown = http.post("/v1/instances", json=_spawn_body(files=files, disposable=True))

    for answer in (kept, thrown):
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "files['/bin/rootme']." in error
        assert "0 to 65535" in error
    shift = _shift(hostile)
    assert _setid_below(hostile.data_dir, shift) == []
    assert _owned_outside_the_sandbox(hostile.data_dir, shift) == []


@pytest.mark.parametrize("owner", _ALIEN_OWNERS, ids=lambda o: f"{o['uid']}:{o['gid']}")
def test_a_directory_state_with_an_owner_outside_the_sandbox_is_refused(
    hostile: HostileServer, owner: dict[str, int]
) -> None:
    file_id = _upload(hostile.alice, b"#!/bin/sh\n")
    files = {"/app/rootme": {"uuid": file_id, "mode": "06755", **owner}}

    with LatencyProbe(hostile.bob), hostile.alice.client() as http:
        answer = http.post("/v1/directory_states", json={"files": files})

    assert answer.status_code == 400, answer.text
    assert "0 to 65535" in answer.json()["error"]
    assert _setid_below(hostile.data_dir, _shift(hostile)) == []


@pytest.mark.parametrize("owner", [{"uid": -100000}, {"gid": -100000}, {"uid": 65536}])
def test_a_run_as_an_id_outside_the_sandbox_cannot_create_its_cwd_on_the_host(
    hostile: HostileServer, owner: dict[str, int]
) -> None:
    with LatencyProbe(hostile.bob), hostile.alice.client() as http:
        answer = http.post(
            "/v1/instances", json=_spawn_body(cwd="/made/by/me", disposable=False, **owner)
        )

    assert answer.status_code == 400, answer.text
    assert "0 to 65535" in answer.json()["error"]
    assert _owned_outside_the_sandbox(hostile.data_dir, _shift(hostile)) == []


def test_a_kept_run_at_the_edges_of_the_id_range_leaves_only_shifted_owners_in_its_layer(
    hostile: HostileServer,
) -> None:
    # Everything a tenant may legitimately ask for, at the top of the range: placed files,
    # a directory state, a cwd made for a uid, and chowns from inside the sandbox.
    placed, state_file = _upload(hostile.alice, b"placed\n"), _upload(hostile.alice, b"state\n")
    with hostile.alice.client() as http:
        state = http.post(
            "/v1/directory_states",
            json={"files": {"/app/s": {"uuid": state_file, "uid": 65535, "gid": 65535}}},
        )
        assert state.status_code == 201, state.text
    command = (
        "touch /edge && chown 65535:65535 /edge && chmod 6755 /edge"
        " && mkdir -p /srv/a && chown 65534:65534 /srv/a && ls -ln /edge /bin/placed"
    )
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn(
            command,
            disposable=False,
            directory_state_id=state.json()["id"],
            files={"/bin/placed": {"uuid": placed, "mode": "04755", "uid": 65535, "gid": 0}},
        )
        as_user = hostile.alice.spawn(
            "pwd",
            image=str(done["result_image_uuid"]),
            disposable=False,
            uid=1000,
            gid=1000,
            cwd="/home/u/deep",
        )

    assert done["status"] == "SUCCESS", done
    assert as_user["status"] == "SUCCESS", as_user
    shift = _shift(hostile)
    # The layers exist and hold the files asked for (the scan below is not of nothing).
    owners = {
        (os.lstat(p).st_uid, os.lstat(p).st_gid)
        for p in _image_content(hostile.data_dir)
        if p.name in ("edge", "placed", "s", "deep")
    }
    assert owners == {(shift + 65535, shift + 65535), (shift + 65535, shift), (shift + 1000,) * 2}
    assert _owned_outside_the_sandbox(hostile.data_dir, shift) == []
    assert _setid_below(hostile.data_dir, shift) == []


def _sandtree_mounts(data_dir: Path, mountinfo: str) -> list[Path]:
    """Mount points of runs and views, as a server's ``/proc/PID/mountinfo`` tells anyone.

    Overlay options no longer name the data dir (layers are given through a descriptor), so
    every mount under ``/run/sandtree/`` counts; the caller keeps those holding its file.
    """
    del data_dir  # kept in the signature: the mount points are what an attacker reads
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4].startswith("/run/sandtree/"):
            found.append(Path(fields[4]))
    return found


def test_another_local_user_cannot_reach_a_running_sandboxs_rootfs_through_its_mount(
    hostile: HostileServer,
) -> None:
    # Every run's and inspection view's rootfs is mounted under /run/sandtree, and any local
    # account reads the mount points in the server's mountinfo. A setuid file of sandbox root
    # there is host uid 100000, the owner of every tenant's running rootfs. The server's
    # private mount namespace hides the mounts from the host's paths; the mount dir's mode
    # is what stops an account that sees them (an engine run without that namespace).
    kept = hostile.alice.spawn(
        "cp /bin/busybox /bin/sx && chmod 4755 /bin/sx", disposable=False, timeout=30
    )
    assert kept["status"] == "SUCCESS", kept
    image = kept["result_image_uuid"]
    server_pid = hostile.server.process.pid
    in_server = Path(f"/proc/{server_pid}/root")  # root's way into the server's mounts
    with hostile.alice.client() as http:
        listed = http.get(f"/v1/inspect/{image}/list", params={"path": "/bin"})  # a view
        assert listed.status_code == 200, listed.text
        running = http.post(
            "/v1/instances", json=_spawn_body(command="sleep 30", image=image, timeout=40)
        )
        assert running.status_code == 201, running.text
        op_id = running.json()["uuid"]
        try:

            def mounted() -> list[Path]:
                info = Path(f"/proc/{server_pid}/mountinfo").read_text()
                points = _sandtree_mounts(hostile.data_dir, info)
                return [p for p in points if (in_server / p.relative_to("/") / "bin/sx").exists()]

            wait_until(lambda: len(mounted()) >= 2, "run and view mounts holding /bin/sx")
            points = mounted()
            with LatencyProbe(hostile.bob):
                seen = _as_nobody("cat", f"/proc/{server_pid}/mountinfo")
                # From the host's paths, through /proc/PID/root, and in the server's mounts.
                attempts: list[tuple[int | None, tuple[str, ...]]] = [
                    attempt
                    for point in points
                    for attempt in [
                        (None, ("ls", f"{in_server}{point}")),
                        (None, ("ls", str(point.parent))),
                        (server_pid, ("ls", str(point))),
                        (server_pid, ("ls", str(point.parent))),
                        (server_pid, ("stat", f"{point}/bin/sx")),
                        (server_pid, ("sh", "-c", f"{point}/bin/sx id")),
                    ]
                ]
                tries = [_as_nobody(*argv, mount_ns=ns) for ns, argv in attempts]
        finally:
            http.delete(f"/v1/operations/{op_id}")
        hostile.alice.wait(op_id)

    assert set(points) <= set(_sandtree_mounts(hostile.data_dir, seen.stdout))  # found them
    assert [t.args for t in tries if t.returncode == 0] == []
    assert all("Permission denied" in t.stderr for t in tries), [t.stderr for t in tries]


# -- imports and the data dir, on a server of their own --------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[ScriptedRegistry]:
    with ScriptedRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def exposed(
    busybox_rootfs: Path, registry: ScriptedRegistry
) -> Iterator[tuple[HostileServer, Path]]:
    """A server whose data dir sits where every local user can walk up to it (under a 0755
    dir in /tmp, not pytest's 0700 one), made 0777 beforehand as a careless operator might."""
    base = Path(tempfile.mkdtemp(prefix="sandtree-exposed-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "data").mkdir(mode=0o777)
    os.chmod(base / "data", 0o777)
    env = {"SANDTREE_INSECURE_REGISTRIES": registry.host}
    try:
        with start_hostile_server(base, busybox_rootfs, env=env) as srv:
            yield srv, base
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def test_a_registry_layer_with_setuid_files_of_alien_owners_imports_them_as_nobody(
    exposed: tuple[HostileServer, Path], registry: ScriptedRegistry
) -> None:
    server, _ = exposed
    registry.add_image(
        "evil/rootme",
        [
            layer_tar(
                [
                    Entry(path="bin", kind="dir"),
                    Entry(path="bin/su0", data=b"#!", mode=0o4755, uid=-100000, gid=-100000),
                    Entry(path="bin/su4m", data=b"#!", mode=0o6755, uid=4000000, gid=4000000),
                    Entry(path="bin/su32", data=b"#!", mode=0o4755, uid=2**32 - 1, gid=0),
                ]
            )
        ],
    )
    url = f"docker://{registry.host}/evil/rootme:latest"

    with LatencyProbe(server.bob), server.alice.client() as http:
        answer = http.post("/v1/images/import", json={"registry": {"url": url}, "tag": "evil"})
        assert answer.status_code == 201, answer.text
        done = server.alice.wait(answer.json()["uuid"])

    assert done["status"] == "SUCCESS", done
    shift = _shift(server)
    owners = {}
    for path in _image_content(server.data_dir):
        if path.name in ("su0", "su4m", "su32"):
            st = os.lstat(path)
            owners[path.name] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    nobody = shift + _NOBODY
    assert owners == {
        "su0": (nobody, nobody, 0o755),
        "su4m": (nobody, nobody, 0o755),
        "su32": (nobody, shift, 0o755),
    }
    assert _setid_below(server.data_dir, shift) == []
    assert _owned_outside_the_sandbox(server.data_dir, shift) == []


def _as_nobody(*argv: str, mount_ns: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the local account nobody; ``mount_ns``: in that pid's mount namespace
    (root enters it first, as an account sees mounts made without a private namespace).

    setpriv keeps root's capabilities until it execs ``argv[0]``, so ``argv[0]`` must be a
    host binary; a path nobody would exec goes through ``sh -c``.
    """
    enter = [] if mount_ns is None else ["nsenter", f"--mount=/proc/{mount_ns}/ns/mnt", "--"]
    return subprocess.run(
        [*enter, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_another_local_user_can_neither_list_nor_read_anything_in_the_data_dir(
    exposed: tuple[HostileServer, Path],
) -> None:
    server, base = exposed
    data = server.data_dir
    # Something of every kind: a kept image (layers, a run dir), an upload, a running run.
    _upload(server.alice, b"tenant secret\n")
    kept = server.alice.spawn("echo secret > /root/s", disposable=False, env={"KEY": "v"})
    assert kept["status"] == "SUCCESS", kept
    assert _as_nobody("ls", str(base)).returncode == 0  # the user does reach the data dir

    with server.alice.client() as http:
        running = http.post(
            "/v1/instances", json=_spawn_body(command="sleep 20", env={"KEY": "v"}, timeout=30)
        )
        assert running.status_code == 201, running.text
        op_id = running.json()["uuid"]
        try:
            runs = data / "store" / "runs"
            wait_until(lambda: any(runs.iterdir()), f"run dir under {runs}")
            targets = [
                data, data / "store", data / "store" / "layers", data / "store" / "runs",
                data / "files", *(data / "store" / "runs").iterdir(),
            ]  # fmt: skip
            readable = [data / "sandtree.db", data / "tokens.db", data / "admin-token"]
            listed = {str(t): _as_nobody("ls", "-a", str(t)) for t in targets}
            read = {str(f): _as_nobody("head", "-c1", str(f)) for f in readable}
        finally:
            http.delete(f"/v1/operations/{op_id}")
        server.alice.wait(op_id)

    assert {p: r.returncode for p, r in listed.items() if r.returncode == 0} == {}
    assert {p: r.returncode for p, r in read.items() if r.returncode == 0} == {}
    assert all("Permission denied" in r.stderr for r in [*listed.values(), *read.values()])
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700  # fixed at start, though made 0777


def test_inside_the_data_dir_every_directory_and_database_is_private_too(
    exposed: tuple[HostileServer, Path],
) -> None:
    # Were the top dir opened again (an operator's chmod), nothing under it opens up.
    data = exposed[0].data_dir
    open_dirs = [
        str(p)
        for p in [data / "store", data / "store" / "layers", data / "store" / "runs",
                  data / "store" / "tmp", data / "files"]
        if stat.S_IMODE(os.stat(p).st_mode) & 0o077
    ]  # fmt: skip
    open_files = [
        str(p) for p in data.iterdir() if p.is_file() and stat.S_IMODE(os.stat(p).st_mode) & 0o077
    ]
    assert open_dirs == []
    assert open_files == []
