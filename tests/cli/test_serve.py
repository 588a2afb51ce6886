"""``sandtree serve`` as a real process, driven by the public ConTree client from PyPI."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from contree_client import AuthenticationError, ClosableStreamRepr
from contree_client.httpx import ContreeClient
from contree_client.runtime import RetryPolicy
from contree_sdk import ContreeSync

from sandtree.engine.runtime import host_cgroups
from sandtree.testing import ServerProcess

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", tmp_path / "config") as srv:
        yield srv


def test_first_start_prints_an_admin_token_saves_it_0600_and_writes_the_client_config(
    server: ServerProcess,
) -> None:
    token_file = server.data_dir / "admin-token"
    secret = token_file.read_text(encoding="utf-8").strip()

    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert any(secret in line for line in server.output)
    config = (server.config_home / "sandtree" / "config.json").read_text(encoding="utf-8")
    assert secret in config
    assert server.url in config


def test_the_startup_line_and_whoami_name_the_host_s_cgroup_mode(server: ServerProcess) -> None:
    mode = host_cgroups().mode
    label = {"v1": "cgroup v1", "hybrid": "cgroup hybrid", "v2": "cgroup v2 (unified)"}[mode]

    whoami = httpx.get(
        f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {server.admin_token}"}
    ).json()

    started = [line for line in server.output if "sandtree listening on" in line]
    assert len(started) == 1, server.output
    assert label in started[0], started[0]
    assert whoami["cgroup_mode"] == mode


def test_the_contree_client_authenticates_and_lists_images(server: ServerProcess) -> None:
    secret = server.admin_token

    with ContreeClient(secret, base_url=server.url) as client:
        me = client.whoami()
        images = client.list_images(tagged=True)

    assert me.permissions["spawn"] is True
    assert images.images == []
    with (
        ContreeClient("st_wrong", base_url=server.url) as client,
        pytest.raises(AuthenticationError),
    ):
        client.whoami()


@pytest.fixture
def client(busybox_server: ServerProcess) -> Iterator[ContreeClient]:
    """The public ConTree client, pointed at a server with busybox."""
    with ContreeClient(busybox_server.admin_token, base_url=busybox_server.url) as c:
        yield c


def _wait_for(client: ContreeClient, op_id: str, kind: str, spid: int | None = None) -> None:
    """Follow the operation's event stream until an event of ``kind`` (and ``spid``)."""
    for event in client.follow_operation_events(op_id, timeout=30):
        if event.type == kind and (spid is None or event.spid == spid):
            return
    raise AssertionError(f"the stream ended without a {kind} event")


@pytest.mark.anyio
async def test_the_contree_client_runs_a_command_and_keeps_its_result(
    client: ContreeClient,
) -> None:
    spawned = client.spawn_instance(
        "echo hello from $(hostname); echo kept > /root/kept",
        "tag:busybox:latest",
        shell=True,
        disposable=False,
    )
    assert spawned.uuid is not None
    # The client follows the SSE event stream until the completion event.
    done = client.wait_operation(spawned.uuid, timeout=60)

    assert done.status == "SUCCESS", done.error
    assert done.metadata is not None
    result = done.metadata.result  # type: ignore[union-attr]
    assert result.stdout.value == "hello from linuxkit\n"
    assert done.result_image_uuid is not None
    assert done.result_image_uuid != done.image_uuid


def test_sigterm_stops_the_server_cleanly_and_a_restart_keeps_the_admin_token(
    server: ServerProcess, tmp_path: Path
) -> None:
    secret = server.admin_token

    assert server.stop()

    again = ServerProcess(server.data_dir, server.config_home)
    try:
        again.wait_until_ready()
        assert not any(secret in line for line in again.output)  # shown only once
        with ContreeClient(secret, base_url=again.url) as client:
            assert client.whoami().permissions["list"] is True
    finally:
        assert again.stop()


@pytest.mark.anyio
async def test_the_contree_sdk_runs_keeps_reads_and_chains(busybox_server: ServerProcess) -> None:
    sdk = ContreeSync(base_url=busybox_server.url, token=busybox_server.admin_token)
    image = sdk.images.use("busybox:latest")

    kept = image.run(shell="echo hi; echo x > /root/f", disposable=False).wait()
    chained = kept.run(shell="cat /root/f").wait()
    content = kept.read("/root/f")
    names = [entry.path for entry in kept.ls("/root")]

    assert (kept.stdout, kept.exit_code) == ("hi\n", 0)
    assert content == b"x\n"
    assert names == ["f"]
    assert chained.stdout == "x\n"


@pytest.mark.anyio
async def test_the_contree_client_execs_into_a_running_instance_and_feeds_its_stdin(
    client: ContreeClient,
) -> None:
    spawned = client.spawn_instance(
        "cat", "tag:busybox:latest", shell=True, stdin=ClosableStreamRepr(value="", close=False)
    )
    assert spawned.uuid is not None
    _wait_for(client, spawned.uuid, "spawn")  # the main process exists

    spid = client.operation_subprocess_create(spawned.uuid, "echo sub", shell=True)
    _wait_for(client, spawned.uuid, "exit", spid)
    sub = client.operation_subprocess(spawned.uuid, spid)
    client.operation_subprocess_stdin(spawned.uuid, 1, "fed\n", close=True)
    done = client.wait_operation(spawned.uuid, timeout=60)

    assert spid == 2
    assert sub.stdout is not None
    assert sub.stdout.value == "sub\n"
    assert done.status == "SUCCESS", done.error
    assert done.metadata.result.stdout.value == "fed\n"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_contree_client_execs_into_a_run_the_moment_it_is_spawned(
    busybox_server: ServerProcess,
) -> None:
    # No wait for the sandbox: the server answers 425 while it starts, which a client with
    # the library's default RetryPolicy retries, so the exec lands as soon as the sandbox is
    # up (a 409 here would raise).
    client = ContreeClient(
        busybox_server.admin_token, base_url=busybox_server.url, retry=RetryPolicy()
    )
    for _ in range(3):
        spawned = client.spawn_instance(
            "cat", "tag:busybox:latest", shell=True, stdin=ClosableStreamRepr(value="", close=False)
        )
        assert spawned.uuid is not None
        spid = client.operation_subprocess_create(spawned.uuid, "echo sub", shell=True)
        client.operation_subprocess_stdin(spawned.uuid, 1, "fed\n", close=True)
        done = client.wait_operation(spawned.uuid, timeout=60)

        assert spid == 2
        assert done.status == "SUCCESS", done.error
        assert done.metadata.result.stdout.value == "fed\n"  # type: ignore[union-attr]
    client.close()


@pytest.mark.anyio
async def test_sigterm_stops_running_sandboxes_and_records_why(
    busybox_server: ServerProcess,
) -> None:
    server = busybox_server
    secret = server.admin_token
    with ContreeClient(secret, base_url=server.url) as client:
        spawned = client.spawn_instance("sleep 1000", "tag:busybox:latest", shell=True)
        assert spawned.uuid is not None
        _wait_for(client, spawned.uuid, "spawn")

    assert server.stop()
    assert _processes_of(spawned.uuid) == []  # before any restart could clean up

    again = ServerProcess(server.data_dir, server.config_home)
    try:
        again.wait_until_ready()
        with ContreeClient(secret, base_url=again.url) as client:
            op = client.get_operation_status(spawned.uuid)
    finally:
        assert again.stop()
    assert op.status == "FAILED"
    assert op.error is not None
    assert "shut down" in op.error  # recorded by the stopping server, not by the restart


def _processes_of(op_id: str) -> list[str]:
    """Host processes still in the operation's sandbox cgroups."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"st-{op_id}" in (proc / "cgroup").read_text("utf-8"):
                found.append(proc.name)
        except OSError:
            continue
    return found
