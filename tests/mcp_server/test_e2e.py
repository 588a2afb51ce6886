"""``sandtree mcp`` end to end: a real ``sandtree serve`` (crun, busybox), our MCP server as a
process driven by the MCP SDK's own client over stdio and over streamable HTTP, and the
public reference server ``contree-mcp`` 0.5.0 run through the same recipes for comparison.

The reference lives in its own venv (it needs ``mcp<2``); ``scripts/install`` makes it at
``/var/cache/sandtree-test/contree-mcp-venv``. Its parity tests skip when that venv is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from sandtree.client import SandtreeClient
from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import ServerProcess
from sandtree.testing_registry import LocalRegistry, TestImage

from .agentkit import McpAgent as Agent

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="a real sandtree serve needs root"),
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]

REFERENCE_VENV = Path("/var/cache/sandtree-test/contree-mcp-venv")
REFERENCE = REFERENCE_VENV / "bin" / "contree-mcp"
BUSYBOX = "tag:busybox:latest"
#: Excludes as users write them: names that must match at any depth.
EXCLUDES = ["__pycache__", ".git", "node_modules", "*.pyc"]
#: The excludes of the spec's workflow (no "*.pyc"): the names alone must do.
NAMES = ["__pycache__", ".git", "node_modules"]
#: What ``make_project`` leaves after EXCLUDES, as ``find /app -type f | sort`` prints it.
SYNCED = [
    "/app/.gitignore",
    "/app/main.sh",
    "/app/pkg/data.txt",
    "/app/pkg/sub/keep.txt",
    "/app/run.sh",
    "/app/web/app.js",
]


# -- servers and clients -------------------------------------------------------------------


def _import_busybox(data_dir: Path, rootfs: Path) -> None:
    async def main() -> None:
        settings = Settings(data_dir=data_dir)
        async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
            await engine.import_local(rootfs, tag="busybox:latest")

    anyio.run(main)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[ServerProcess]:
    """One real server for the module, its store holding ``busybox:latest``."""
    tmp = tmp_path_factory.mktemp("serve")
    _import_busybox(tmp / "data", busybox_rootfs)
    with ServerProcess(tmp / "data", tmp / "config") as srv:
        yield srv


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


@pytest.fixture(scope="module")
def busybox_uuid(server: ServerProcess) -> str:
    async def main() -> str:
        async with SandtreeClient(server.url, server.admin_token) as client:
            return await client.resolve_image(BUSYBOX)

    return anyio.run(main)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ours_stdio(server: ServerProcess, state_dir: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandtree", "mcp", "--url", server.url, "--token", server.admin_token,
              "--state-dir", str(state_dir)],
    )  # fmt: skip


def _reference_stdio(server: ServerProcess, home: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=str(REFERENCE),
        args=["--auth-type", "jwt", "--url", server.url, "--token", server.admin_token],
        env={"CONTREE_HOME": str(home), "CONTREE_NO_UPDATE_CHECK": "1"},
    )


@contextlib.asynccontextmanager
async def stdio_agent(params: StdioServerParameters, log: Path, name: str) -> AsyncIterator[Agent]:
    """The server ``params`` starts, over stdio; its stderr goes to ``log``."""
    with log.open("a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield Agent(client, name)


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
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                yield Agent(client, "sandtree mcp --http")
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with anyio.move_on_after(10) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
                await process.wait()


def make_project(root: Path) -> Path:
    """A project with what agents exclude at several depths, and an executable script."""
    files = {
        "main.sh": "echo main ran; cat /app/pkg/data.txt\n",
        "run.sh": "#!/bin/sh\necho run.sh ran\n",
        "pkg/data.txt": "data v1\n",
        "pkg/stale.pyc": "compiled",
        "pkg/__pycache__/mod.cpython-311.pyc": "compiled",
        "pkg/sub/keep.txt": "kept\n",
        "pkg/sub/__pycache__/deep.pyc": "compiled",
        "web/app.js": "console.log(1)\n",
        "web/node_modules/dep/index.js": "module.exports = 1\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".gitignore": "__pycache__/\n",
        "__pycache__/top.pyc": "compiled",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "run.sh").chmod(0o755)
    return root


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
    params = _ours_stdio(server, tmp_path / "mcp-state")
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
    params = _ours_stdio(server, tmp_path / "mcp-state")
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
    _import_busybox(data_dir, busybox_rootfs)
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


# -- parity with the reference server (contree-mcp 0.5.0) -----------------------------------


@pytest.fixture
async def peers(server: ServerProcess, tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    """Our MCP server and the reference, both over stdio, both on the same real server."""
    if not REFERENCE.is_file():
        pytest.skip(
            f"the reference MCP server is not installed ({REFERENCE} is missing); "
            "scripts/install makes its venv"
        )
    ours = _ours_stdio(server, tmp_path / "mcp-state")
    reference = _reference_stdio(server, tmp_path / "contree-home")
    async with (
        stdio_agent(ours, tmp_path / "ours.log", "sandtree mcp") as a,
        stdio_agent(reference, tmp_path / "reference.log", "contree-mcp") as b,
    ):
        yield a, b


async def _recipes(agent: Agent, project: Path, out: Path) -> dict[str, Any]:
    """The workflows within what the reference does correctly, reduced to their outcomes
    (exit codes, output, files, whether images were made); ids differ between peers."""
    outcome: dict[str, Any] = {}
    images = (await agent.call("list_images", tag_prefix="busybox"))["images"]
    outcome["images"] = sorted((i["uuid"], i["tag"]) for i in images)

    # Top-level excludes only: the reference matches them against the relative path's start.
    state = await agent.call("rsync", source=str(project), destination="/app", exclude=["web"])
    synced = await agent.call(
        "run",
        command="find /app -type f | sort; sh /app/main.sh; stat -c '%a %n' /app/*.sh",
        image=BUSYBOX,
        directory_state_id=state,
    )
    outcome["synced"] = (synced["status"], synced["exit_code"], synced["stdout"])

    kept = await agent.call(
        "run", command="echo v1 > /root/child.txt", image=BUSYBOX, disposable=False
    )
    child = kept["result_image_uuid"]
    outcome["kept"] = (kept["exit_code"], kept["stdout"], child is not None)
    assert child != kept["image_uuid"]
    chained = await agent.call("run", command="cat /root/child.txt; ls /root", image=child)
    failed = await agent.call("run", command="echo oops >&2; exit 3", image=child)
    outcome["chained"] = (chained["exit_code"], chained["stdout"])
    outcome["failed"] = (failed["status"], failed["exit_code"], failed["stderr"])
    parent = await agent.call("run", command="ls /root", image=kept["image_uuid"])
    outcome["parent"] = parent["stdout"]

    ids = [
        (await agent.call("run", command=command, image=child, wait=False))["operation_id"]
        for command in ("sleep 0.3; echo a", "echo b; exit 1")
    ]
    waited = await agent.call("wait_operations", operation_ids=ids, mode="all")
    outcome["waited"] = (
        sorted(waited["completed"]) == sorted(ids),
        waited["cancelled"],
        waited["timed_out"],
        [(waited["results"][i]["exit_code"], waited["results"][i]["stdout"]) for i in ids],
    )

    read = await agent.call("read_file", image=child, path="/root/child.txt")
    outcome["read"] = (read["content"], read["encoding"], read["bytes_size"])
    listing = await agent.call("list_files", image=BUSYBOX, path="/etc")
    outcome["listed"] = sorted(
        (f["name"], f["type"], f["size"], f["mode"]) for f in listing["files"]
    )
    got = await agent.call(
        "download", image=BUSYBOX, path="/etc/passwd", destination=str(out), executable=True
    )
    outcome["downloaded"] = (
        got["success"], got["size"], got["executable"], os.access(out, os.X_OK),
        await anyio.Path(out).read_bytes(),
    )  # fmt: skip
    return outcome


async def test_the_reference_and_ours_agree_on_the_recipes(
    peers: tuple[Agent, Agent], tmp_path: Path
) -> None:
    ours, reference = peers
    project = make_project(tmp_path / "project")
    expected = await _recipes(ours, project, tmp_path / "ours-passwd")
    assert await _recipes(reference, project, tmp_path / "reference-passwd") == expected
    # And they are the right outcomes, not the same wrong ones.
    assert expected["synced"][1] == 0
    assert "/app/web/app.js" not in expected["synced"][2]
    assert "/app/pkg/__pycache__/mod.cpython-311.pyc" in expected["synced"][2]
    # Modes arrive, also in the reference's format ("0o100755", file-type bits and all).
    assert expected["synced"][2].endswith("644 /app/main.sh\n755 /app/run.sh\n")
    assert expected["chained"] == (0, "v1\nchild.txt\n")
    assert expected["parent"] == ""
    assert expected["failed"] == ("SUCCESS", 3, "oops\n")
    assert expected["waited"] == (True, [], False, [(0, "a\n"), (1, "b\n")])
    assert expected["read"] == ("v1\n", "utf-8", 3)
    assert expected["downloaded"][:4] == (True, len(expected["downloaded"][4]), True, True)


async def test_nested_excludes_match_at_any_depth_where_the_reference_leaks(
    peers: tuple[Agent, Agent], tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    found: dict[str, set[str]] = {}
    for agent in peers:
        state = await agent.call("rsync", source=str(project), destination="/app", exclude=NAMES)
        out = await agent.call(
            "run", command="find /app -type f", image=BUSYBOX, directory_state_id=state
        )
        found[agent.name] = set(out["stdout"].split())
    ours = {*SYNCED, "/app/pkg/stale.pyc"}
    assert found["sandtree mcp"] == ours
    # Reference fault 1: a pattern is a regex matched at the start of the relative path, so
    # nested __pycache__ and node_modules leak, and ".git" drops ".gitignore" too.
    assert found["contree-mcp"] == (ours - {"/app/.gitignore"}) | {
        "/app/pkg/__pycache__/mod.cpython-311.pyc",
        "/app/pkg/sub/__pycache__/deep.pyc",
        "/app/web/node_modules/dep/index.js",
    }


async def test_a_wait_that_times_out_leaves_the_run_going_where_the_reference_fakes_a_failure(
    peers: tuple[Agent, Agent],
) -> None:
    outcomes = {}
    for agent in peers:
        op = (await agent.call("run", command="sleep 120", image=BUSYBOX, wait=False))[
            "operation_id"
        ]
        waited = await agent.call("wait_operations", operation_ids=[op], timeout=0.5)
        now = await agent.call("get_operation", operation_id=op)
        outcomes[agent.name] = (waited, now["status"])
        await agent.call("cancel_operation", operation_id=op)
    ours, status = outcomes["sandtree mcp"]
    assert (ours["timed_out"], ours["completed"], len(ours["pending"])) == (True, [], 1)
    assert status in ("PENDING", "ASSIGNED", "EXECUTING")
    # Reference fault 4: a fake FAILED result, counted as completed, timed_out=false (the
    # operation itself goes on running).
    theirs, status = outcomes["contree-mcp"]
    [fake] = theirs["results"].values()
    assert (theirs["timed_out"], fake["status"]) == (False, "FAILED")
    assert "did not complete" in fake["error"]
    assert status in ("PENDING", "ASSIGNED", "EXECUTING")


async def test_wait_any_leaves_the_others_running_where_the_reference_cancels_them(
    peers: tuple[Agent, Agent],
) -> None:
    left: dict[str, str] = {}
    for agent in peers:
        slow = (await agent.call("run", command="sleep 120", image=BUSYBOX, wait=False))[
            "operation_id"
        ]
        fast = (await agent.call("run", command="true", image=BUSYBOX, wait=False))["operation_id"]
        waited = await agent.call("wait_operations", operation_ids=[slow, fast], mode="any")
        assert waited["completed"] == [fast]
        left[agent.name] = (await agent.call("get_operation", operation_id=slow))["status"]
        await agent.call("cancel_operation", operation_id=slow)
    assert left["sandtree mcp"] in ("PENDING", "ASSIGNED", "EXECUTING")
    assert left["contree-mcp"] == "CANCELLED"


async def test_lineage_comes_from_the_server_so_it_covers_images_the_reference_made(
    peers: tuple[Agent, Agent], busybox_uuid: str
) -> None:
    ours, reference = peers
    made = await reference.call("run", command="echo x > /root/x", image=BUSYBOX, disposable=False)
    child = made["result_image_uuid"]
    lineage = json.loads(await ours.read(f"contree://image/{child}/lineage"))
    assert lineage["parent"]["uuid"] == busybox_uuid
    assert lineage["depth"] == 1
    # Reference fault 3: its lineage is its own process's cache, blind to other clients.
    made_by_ours = await ours.call(
        "run", command="echo y > /root/y", image=BUSYBOX, disposable=False
    )
    theirs = json.loads(
        await reference.read(f"contree://image/{made_by_ours['result_image']}/lineage")
    )
    assert (theirs["parent"], theirs["is_known"]) == (None, False)
