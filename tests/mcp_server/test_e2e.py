"""``sandtree mcp`` end to end: a real ``sandtree serve`` (crun, busybox), our MCP server as a
process driven by the MCP SDK's own client over stdio and over streamable HTTP, a run it
leaves running when it stops, and the embedded server it starts with nothing configured.

The same recipes through the reference server ``contree-mcp`` are in
``test_reference_parity.py``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from sandtree.client import SandtreeClient
from sandtree.mcp import TOKEN_FILE
from sandtree.testing import ServerProcess
from sandtree.testing_registry import LocalRegistry, TestImage, loopback_registries_allowed

from .agentkit import McpAgent as Agent
from .e2ekit import (
    BUSYBOX,
    EXCLUDES,
    REAL_SERVER,
    SYNCED,
    import_busybox,
    make_project,
    ours_stdio,
    stdio_agent,
)

pytestmark = REAL_SERVER


@pytest.fixture(scope="module", autouse=True)
def _loopback_registries() -> Iterator[None]:
    """The servers of this module reach the test registries on 127.0.0.1 (the operator lists
    them: sandtree refuses loopback registries otherwise)."""
    with loopback_registries_allowed():
        yield


# -- servers and clients -------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[LocalRegistry]:
    """A loopback registry holding ``tools/busybox:1.0`` (busybox as one layer, with ENV)."""
    tmp = tmp_path_factory.mktemp("registry")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(busybox_rootfs, arcname=".")
    with LocalRegistry(tmp / "registry") as reg:
        image = TestImage(layers=[layer.getvalue()], env=["PATH=/bin", "FROM_REGISTRY=yes"])
        reg.push_image("tools/busybox:1.0", [image], tmp)
        yield reg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until_listening(port: int, process: anyio.abc.Process, log: Path) -> None:
    """Wait for ``sandtree mcp --http`` to accept connections. It prints nothing when ready
    (its log level is WARNING), and a port has no event to wait on: probe it, bounded."""
    with anyio.fail_after(30):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                if process.returncode is not None:
                    text = await anyio.Path(log).read_text()
                    raise AssertionError(
                        f"sandtree mcp --http exited {process.returncode}: {text}"
                    ) from None
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


@contextlib.asynccontextmanager
async def http_agent(server: ServerProcess, tmp: Path) -> AsyncIterator[Agent]:
    """``sandtree mcp --http --port P`` as a process, and an MCP client of its ``/mcp``."""
    port = _free_port()
    log = tmp / "mcp-http.log"
    with log.open("ab") as out:
        process = await anyio.open_process(
            [sys.executable, "-m", "sandtree", "mcp", "--url", server.url,
             "--token", server.admin_token, "--state-dir", str(tmp / "mcp-state"),
             "--http", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    async with process:
        try:
            await _until_listening(port, process, log)
            # The token it made on its first start, as an agent's config reads it.
            token = (tmp / "mcp-state" / TOKEN_FILE).read_text(encoding="utf-8").strip()
            headers = {"Authorization": f"Bearer {token}"}
            # The SDK's own timeouts: a response stream may stay open for minutes.
            timeout = httpx2.Timeout(30, read=300)
            async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
                transport = streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
                async with Client(transport) as client:
                    yield Agent(client, "sandtree mcp --http")
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with anyio.move_on_after(10) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
                await process.wait()


# -- the spec's workflows, through our server -----------------------------------------------


async def _workflows(agent: Agent, busybox: str, tmp: Path, registry: LocalRegistry) -> None:
    # 1. Is there a base image already?
    images = (await agent.call("list_images", tag_prefix="busybox"))["images"]
    assert {(i["uuid"], i["tag"]) for i in images} >= {(busybox, "busybox:latest")}
    missing = await agent.fail("run", command="true", image="tag:python:3.11")
    assert "list_images" in missing

    # 2. Only if not: import it (from the loopback registry), then run in it.
    imported = await agent.call(
        "import_image", registry_url=f"docker://{registry.host}/tools/busybox:1.0", tag="tools:1"
    )
    assert (imported["status"], imported["kind"]) == ("SUCCESS", "image_import")
    assert imported["result"]["tag"] == "tools:1"
    tagged = (await agent.call("list_images", tag_prefix="tools"))["images"]
    assert [i["uuid"] for i in tagged] == [imported["result_image"]]
    env = await agent.call("run", command="echo $FROM_REGISTRY", image="tag:tools:1")
    assert (env["exit_code"], env["stdout"]) == (0, "yes\n")

    # 3-4. Sync once (nested excludes honoured), run with the directory state.
    project = make_project(tmp / "project")
    state = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    assert isinstance(state, int)
    synced = await agent.call(
        "run",
        command="find /app -type f | sort; sh main.sh; ./run.sh; stat -c %a run.sh",
        image=BUSYBOX,
        directory_state_id=state,
        cwd="/app",
    )
    assert (synced["exit_code"], synced["stderr"]) == (0, "")
    assert synced["stdout"] == "\n".join([*SYNCED, "main ran", "data v1", "run.sh ran", "755\n"])
    again = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    assert again == state  # nothing changed: the same state
    (project / "pkg" / "data.txt").write_text("data v2\n", encoding="utf-8")
    changed = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    assert changed != state
    out = await agent.call(
        "run", command="cat /app/pkg/data.txt", image=BUSYBOX, directory_state_id=changed
    )
    assert out["stdout"] == "data v2\n"

    # 5. disposable=false keeps the filesystem as a child image; a child run sees it.
    kept = await agent.call(
        "run",
        command=r"echo v1 > /root/child.txt; printf '\000\377\001' > /root/bin.dat",
        image=BUSYBOX,
        disposable=False,
    )
    child = kept["result_image"]
    assert (kept["exit_code"], kept["filesystem_changed"]) == (0, True)
    assert child not in (None, busybox)
    assert kept["result_image_uuid"] == child
    assert kept["image_uuid"] == busybox
    chained = await agent.call("run", command="cat /root/child.txt", image=child)
    assert (chained["exit_code"], chained["stdout"]) == (0, "v1\n")
    unchanged = await agent.call("run", command="true", image=child, disposable=False)
    assert unchanged["filesystem_changed"] is False
    assert unchanged["result_image"] == child
    discarded = await agent.call("run", command="echo gone > /root/gone.txt", image=child)
    assert discarded["result_image"] is None

    # 6. Parallel branches: two wait=false runs, then wait for all of them, or any.
    first = (await agent.call("run", command="sleep 0.3; echo a", image=child, wait=False))[
        "operation_id"
    ]
    second = (await agent.call("run", command="echo b", image=child, wait=False))["operation_id"]
    both = await agent.call("wait_operations", operation_ids=[first, second], mode="all")
    assert sorted(both["completed"]) == sorted([first, second])
    assert (both["timed_out"], both["pending"], both["cancelled"]) == (False, [], [])
    assert both["results"][first]["stdout"] == "a\n"
    assert both["results"][second]["stdout"] == "b\n"
    slow = (await agent.call("run", command="sleep 120", image=child, wait=False))["operation_id"]
    fast = (await agent.call("run", command="echo fast", image=child, wait=False))["operation_id"]
    anyone = await agent.call("wait_operations", operation_ids=[slow, fast], mode="any")
    assert (anyone["completed"], anyone["pending"], anyone["timed_out"]) == ([fast], [slow], False)
    assert anyone["results"][fast]["stdout"] == "fast\n"
    # The slow one goes on (mode="any" stops waiting, never the work) until cancelled.
    running = await agent.call("get_operation", operation_id=slow)
    assert running["status"] in ("PENDING", "ASSIGNED", "EXECUTING")
    cancel = await agent.call("cancel_operation", operation_id=slow)
    assert cancel == {"cancelled": True, "operation_id": slow}
    ended = await agent.call("wait_operations", operation_ids=[slow], timeout=60)
    assert ended["results"][slow]["status"] == "CANCELLED"
    assert ended["cancelled"] == [slow]

    # 7. Build, then download the artifact as an executable.
    built = await agent.call(
        "run",
        command="mkdir -p /app/target/release && cd /app/target/release && "
        "printf '#!/bin/sh\\necho built\\n' > myapp",
        image=BUSYBOX,
        disposable=False,
        timeout=300,
    )
    target = tmp / "out" / "myapp"
    got = await agent.call(
        "download",
        image=built["result_image"],
        path="/app/target/release/myapp",
        destination=str(target),
        executable=True,
    )
    assert got["success"] is True
    assert (got["destination"], got["size"], got["executable"]) == (str(target), 21, True)
    assert os.access(target, os.X_OK)
    assert (await anyio.run_process([target])).stdout == b"built\n"

    # Reading an image needs no sandbox.
    text = await agent.call("read_file", image=child, path="/root/child.txt")
    assert (text["content"], text["encoding"], text["bytes_size"]) == ("v1\n", "utf-8", 3)
    binary = await agent.call("read_file", image=child, path="/root/bin.dat")
    assert (binary["content"], binary["encoding"], binary["bytes_size"]) == ("AP8B", "base64", 3)
    listing = await agent.call("list_files", image=child, path="/root")
    entries = {(f["name"], f["path"], f["type"], f["size"]) for f in listing["files"]}
    assert entries == {
        ("child.txt", "/root/child.txt", "file", 3),
        ("bin.dat", "/root/bin.dat", "file", 3),
    }
    assert listing["count"] == 2

    # 8. Lineage, then roll back to the parent and keep working from it.
    grand = await agent.call(
        "run", command="echo v2 > /root/grand.txt", image=child, disposable=False
    )
    grandchild = grand["result_image"]
    lineage = json.loads(await agent.read(f"contree://image/{grandchild}/lineage"))
    assert lineage["image"]["uuid"] == grandchild
    assert lineage["parent"]["uuid"] == child
    assert [a["uuid"] for a in lineage["ancestors"]] == [child, busybox]
    assert (lineage["root"]["uuid"], lineage["depth"]) == (busybox, 2)
    parent = lineage["parent"]["uuid"]
    back = await agent.call("run", command="ls /root", image=parent)
    assert back["stdout"].split() == ["bin.dat", "child.txt"]  # grand.txt is absent
    children = json.loads(await agent.read(f"contree://image/{child}/lineage"))["children"]
    assert grandchild in {c["uuid"] for c in children}


async def test_the_workflows_over_stdio(
    server: ServerProcess, busybox_uuid: str, tmp_path: Path, registry: LocalRegistry
) -> None:
    params = ours_stdio(server, tmp_path / "mcp-state")
    async with stdio_agent(params, tmp_path / "mcp.log", "sandtree mcp") as agent:
        await _workflows(agent, busybox_uuid, tmp_path, registry)


async def test_the_workflows_over_streamable_http(
    server: ServerProcess, busybox_uuid: str, tmp_path: Path, registry: LocalRegistry
) -> None:
    async with http_agent(server, tmp_path) as agent:
        await _workflows(agent, busybox_uuid, tmp_path, registry)


async def test_stopping_the_stdio_server_leaves_a_detached_run_running(
    server: ServerProcess, tmp_path: Path
) -> None:
    # The run blocks on a FIFO until the test releases it through the REST API, after the
    # MCP server is gone: no timing decides whether it was still running then.
    gate = "mkfifo /tmp/gate 2>/dev/null; "
    params = ours_stdio(server, tmp_path / "mcp-state")
    async with stdio_agent(params, tmp_path / "mcp.log", "sandtree mcp") as agent:
        started = await agent.call(
            "run", command=gate + "read word < /tmp/gate; echo done $word", image=BUSYBOX,
            wait=False,
        )  # fmt: skip
    # Leaving the block closed the MCP server's stdin and waited for it to exit (or killed
    # its process group).
    op_id = started["operation_id"]
    async with SandtreeClient(server.url, server.admin_token) as client:
        async for event in client.events(op_id, follow=True):
            if event.type in ("spawn", "completion"):
                break
        when_closed = await client.get_operation(op_id)
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {server.admin_token}"}
        ) as http:
            release = await http.post(
                f"/operations/{op_id}/subprocesses",
                json={"command": gate + "echo released > /tmp/gate", "shell": True},
            )
        ended = await client.wait_operation(op_id, timeout=60)
    assert when_closed["status"] == "EXECUTING", when_closed
    assert release.status_code == 201, release.text
    assert (ended["status"], ended["error"]) == ("SUCCESS", None)
    result = ended["metadata"]["result"]
    assert result["state"]["exit_code"] == 0
    assert result["stdout"]["value"] == "done released\n"


# -- with nothing configured, the embedded server ------------------------------------------


def _stop_process_group(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the group ``pid`` leads (a ``start_new_session`` child of another process)
    and wait for its leader to exit through a pidfd (it is not our child to wait for)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        readable, _, _ = select.select([pidfd], [], [], timeout)
        if not readable:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


@pytest.fixture
def embedded_data_dir(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Path]:
    """A data directory with busybox for the embedded server, stopped after the test."""
    data_dir = tmp_path / "embedded"
    import_busybox(data_dir, busybox_rootfs)
    yield data_dir
    pid_file = data_dir / "serve.pid"
    if pid_file.is_file():
        _stop_process_group(int(pid_file.read_text(encoding="utf-8")))


async def test_with_nothing_configured_it_starts_the_embedded_server(
    embedded_data_dir: Path, tmp_path: Path
) -> None:
    config_home = tmp_path / "config"
    config_home.mkdir()
    port = _free_port()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandtree", "mcp", "--state-dir", str(tmp_path / "mcp-state")],
        # Only what is given here and the SDK's safe defaults (HOME, PATH…) reach it: no
        # SANDTREE_URL or SANDTREE_TOKEN, and an empty config home.
        env={
            "XDG_CONFIG_HOME": str(config_home),
            "SANDTREE_DATA_DIR": str(embedded_data_dir),
            "SANDTREE_PORT": str(port),
        },
    )
    async with stdio_agent(params, tmp_path / "mcp.log", "sandtree mcp (embedded)") as agent:
        images = (await agent.call("list_images"))["images"]
        ran = await agent.call("run", command="echo embedded", image=BUSYBOX)
    assert [i["tag"] for i in images] == ["busybox:latest"]
    assert ran["stdout"] == "embedded\n"
    # It outlives the MCP server, and the config it wrote names it for the next start.
    pid = int((embedded_data_dir / "serve.pid").read_text(encoding="utf-8"))
    os.kill(pid, 0)
    config = json.loads((config_home / "sandtree" / "config.json").read_text(encoding="utf-8"))
    assert config["url"] == f"http://127.0.0.1:{port}"
