"""Parity with the public reference server ``contree-mcp`` 0.5.0: it and our MCP server, both
over stdio against the same real ``sandtree serve`` (crun, busybox), run the same recipes;
where the reference is wrong, the tests pin what each one does.

The reference lives in its own venv (it needs ``mcp<2``); ``scripts/install`` makes it at
``/var/cache/sandtree-test/contree-mcp-venv``. These tests skip when that venv is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import StdioServerParameters

from sandtree.testing import ServerProcess

from .agentkit import McpAgent as Agent
from .e2ekit import (
    BUSYBOX,
    NAMES,
    REAL_SERVER,
    SYNCED,
    make_project,
    ours_stdio,
    stdio_agent,
)

pytestmark = REAL_SERVER

REFERENCE_VENV = Path("/var/cache/sandtree-test/contree-mcp-venv")
REFERENCE = REFERENCE_VENV / "bin" / "contree-mcp"


def _reference_stdio(server: ServerProcess, home: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=str(REFERENCE),
        args=["--auth-type", "jwt", "--url", server.url, "--token", server.admin_token],
        env={"CONTREE_HOME": str(home), "CONTREE_NO_UPDATE_CHECK": "1"},
    )


@pytest.fixture
async def peers(server: ServerProcess, tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    """Our MCP server and the reference, both over stdio, both on the same real server."""
    if not REFERENCE.is_file():
        pytest.skip(
            f"the reference MCP server is not installed ({REFERENCE} is missing); "
            "scripts/install makes its venv"
        )
    ours = ours_stdio(server, tmp_path / "mcp-state")
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


async def test_a_run_past_its_timeout_completes_timed_out_in_both(
    peers: tuple[Agent, Agent],
) -> None:
    outcomes = {}
    for agent in peers:
        out = await agent.call("run", command="echo started; sleep 30", image=BUSYBOX, timeout=1)
        outcomes[agent.name] = (out["status"], out.get("timed_out"), out["stdout"], out["error"])
    # The reference reads a completed run's state.timed_out: the agent is told its command
    # timed out, with the output so far, not that the sandbox broke.
    assert outcomes["sandtree mcp"] == ("SUCCESS", True, "started\n", None)
    assert outcomes["contree-mcp"] == outcomes["sandtree mcp"]
