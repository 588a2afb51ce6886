"""rsync: which files a source (a tree, a file, a glob) gives under the destination, excludes
at any depth, sending only what changed, a cache that survives a restart of the MCP server,
and files landing in a run with their modes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mcp import Client

from sandtree.engine import ImageRecord
from sandtree.mcp import McpContext, build_server
from sandtree.mcp._rsync import SyncResult, sync

from .conftest import Agent
from .e2ekit import write_files

pytestmark = pytest.mark.anyio

EXCLUDES = ["__pycache__", "*.pyc", "build/", "docs/private", ".git"]


def _tree(root: Path) -> Path:
    """A project with what excludes must drop at every depth, and look-alikes they must keep."""
    files = {
        "main.py": "print('main')\n",
        "src/app.py": "APP = 1\n",
        "src/pkg/mod.py": "MOD = 2\n",
        "src/pkg/stale.pyc": "bytecode",
        "src/__pycache__/app.cpython-311.pyc": "bytecode",
        "src/pkg/__pycache__/mod.cpython-311.pyc": "bytecode",
        "__pycache__/main.cpython-311.pyc": "bytecode",
        "build/out.txt": "built",
        "src/pkg/build/gen.txt": "generated",
        "tools/build": "a file named build is kept (build/ means directories only)\n",
        "docs/private/secret.md": "secret",
        "docs/public/readme.md": "readme\n",
        "lib/docs/private/kept.md": "a path pattern is anchored at the source\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".gitignore": "*.pyc\n",
        "run.sh": "#!/bin/sh\necho run\n",
    }
    write_files(root, files)
    (root / "run.sh").chmod(0o755)
    (root / "docs/public/readme.md").chmod(0o600)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return _tree(tmp_path / "proj")


async def _state_files(agent: Agent, state_id: int) -> dict[str, dict[str, object]]:
    state = await agent.mc.client.get_directory_state(state_id)
    return dict(state["files"])


async def _sync(agent: Agent, mc: McpContext, source: str, exclude: list[str]) -> SyncResult:
    return await sync(mc.client, mc.sync_cache, mc.server_key, source, "/app", exclude)


async def test_excludes_match_names_at_any_depth_dirs_only_and_paths_from_the_source(
    agent: Agent, project: Path
) -> None:
    state_id = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    assert isinstance(state_id, int)
    assert sorted(await _state_files(agent, state_id)) == [
        "/app/.gitignore",
        "/app/docs/public/readme.md",
        "/app/lib/docs/private/kept.md",
        "/app/main.py",
        "/app/run.sh",
        "/app/src/app.py",
        "/app/src/pkg/mod.py",
        "/app/tools/build",
    ]


async def test_without_excludes_every_file_is_synced(agent: Agent, project: Path) -> None:
    state_id = await agent.call("rsync", source=str(project), destination="/app/")
    assert len(await _state_files(agent, state_id)) == 16


async def test_a_single_file_source_syncs_that_file_into_the_destination(
    agent: Agent, project: Path
) -> None:
    state_id = await agent.call("rsync", source=str(project / "run.sh"), destination="/opt/bin")
    files = await _state_files(agent, state_id)
    assert list(files) == ["/opt/bin/run.sh"]
    assert files["/opt/bin/run.sh"]["mode"] == "0755"


async def test_a_glob_source_syncs_its_matches_relative_to_the_fixed_part(
    agent: Agent, project: Path
) -> None:
    flat = await agent.call("rsync", source=f"{project}/src/*.py", destination="/app")
    assert list(await _state_files(agent, flat)) == ["/app/app.py"]
    deep = await agent.call(
        "rsync", source=f"{project}/src/**/*.py", destination="/app", exclude=["pkg"]
    )
    assert list(await _state_files(agent, deep)) == ["/app/app.py"]
    everything = await agent.call("rsync", source=f"{project}/src/**/*.py", destination="/app")
    assert sorted(await _state_files(agent, everything)) == ["/app/app.py", "/app/pkg/mod.py"]


@pytest.mark.parametrize(
    ("source", "destination", "says"),
    [
        ("relative/dir", "/app", "absolute"),
        ("{project}/absent", "/app", "does not exist"),
        ("{project}/*.nothing", "/app", "matches nothing"),
        ("{project}", "app", "absolute directory in the sandbox"),
    ],
)
async def test_a_source_or_destination_that_cannot_be_synced_is_an_error_saying_why(
    agent: Agent, project: Path, source: str, destination: str, says: str
) -> None:
    message = await agent.fail(
        "rsync", source=source.format(project=project), destination=destination
    )
    assert says in message


async def test_syncing_an_unchanged_tree_again_hashes_and_uploads_nothing_and_answers_the_same_id(
    agent: Agent, project: Path
) -> None:
    first = await _sync(agent, agent.mc, str(project), EXCLUDES)
    assert (first.files, first.hashed, first.uploaded) == (8, 8, 8)
    again = await _sync(agent, agent.mc, str(project), EXCLUDES)
    assert again.directory_state_id == first.directory_state_id
    assert (again.hashed, again.uploaded, again.bytes_uploaded) == (0, 0, 0)
    assert again.reused_state is True
    uploads_before = len(agent.engine.list_files(limit=1000))
    by_tool = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    assert by_tool == first.directory_state_id
    assert len(agent.engine.list_files(limit=1000)) == uploads_before


async def test_a_changed_file_is_the_only_one_hashed_and_uploaded(
    agent: Agent, project: Path
) -> None:
    first = await _sync(agent, agent.mc, str(project), EXCLUDES)
    (project / "src/app.py").write_text("APP = 'changed, and longer'\n")
    changed = await _sync(agent, agent.mc, str(project), EXCLUDES)
    assert (changed.hashed, changed.uploaded) == (1, 1)
    assert changed.directory_state_id != first.directory_state_id
    files = await _state_files(agent, changed.directory_state_id)
    new = agent.engine.get_file(str(files["/app/src/app.py"]["uuid"]))
    assert new.size == len("APP = 'changed, and longer'\n")


async def test_content_seen_before_is_not_uploaded_again(agent: Agent, project: Path) -> None:
    await _sync(agent, agent.mc, str(project), EXCLUDES)
    (project / "copy.py").write_text("print('main')\n")  # the content of main.py
    result = await _sync(agent, agent.mc, str(project), EXCLUDES)
    assert (result.hashed, result.uploaded) == (1, 0)


async def test_a_restarted_mcp_server_on_the_same_state_dir_reuses_the_cache(
    agent: Agent, project: Path
) -> None:
    first = await _sync(agent, agent.mc, str(project), EXCLUDES)
    restarted = McpContext(
        client=agent.mc.client, state_dir=agent.mc.state_dir, token=agent.mc.token
    )
    try:
        again = await _sync(agent, restarted, str(project), EXCLUDES)
        assert again.directory_state_id == first.directory_state_id
        assert (again.hashed, again.uploaded) == (0, 0)
        async with Client(build_server(restarted)) as session:
            result = await session.call_tool(
                "rsync", {"source": str(project), "destination": "/app", "exclude": EXCLUDES}
            )
        assert result.structured_content == {"result": first.directory_state_id}
    finally:
        restarted.close()


async def test_synced_files_land_in_the_run_with_their_modes(
    agent: Agent, base: ImageRecord, project: Path
) -> None:
    state_id = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    out = await agent.call(
        "run",
        command="write /app/ran yes",
        image=base.uuid,
        directory_state_id=state_id,
        disposable=False,
    )
    image = out["result_image"]
    assert (await agent.call("read_file", image=image, path="/app/main.py"))["content"] == (
        "print('main')\n"
    )
    nested = await agent.call("read_file", image=image, path="/app/src/pkg/mod.py")
    assert nested["content"] == "MOD = 2\n"
    listed = await agent.call("list_files", image=image, path="/app")
    top = {f["name"]: f for f in listed["files"]}
    assert top["run.sh"]["mode"] == oct(0o100755)
    assert top["main.py"]["mode"] == oct(0o100644)
    assert "__pycache__" not in top
    public = await agent.call("list_files", image=image, path="/app/docs/public")
    assert [f["mode"] for f in public["files"]] == [oct(0o100600)]


async def test_files_passed_with_a_directory_state_win_on_the_same_path(
    agent: Agent, base: ImageRecord, project: Path
) -> None:
    state_id = await agent.call("rsync", source=str(project / "main.py"), destination="/app")
    override = await agent.call("upload", content="print('override')\n")
    out = await agent.call(
        "run",
        command="write /app/ran yes",
        image=base.uuid,
        directory_state_id=state_id,
        files={"/app/main.py": override["uuid"]},
        disposable=False,
    )
    read = await agent.call("read_file", image=out["result_image"], path="/app/main.py")
    assert read["content"] == "print('override')\n"


async def test_a_directory_state_the_server_lost_is_made_again_by_the_next_rsync(
    agent: Agent, base: ImageRecord, project: Path
) -> None:
    first = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    # The server lost its states (say, a new data directory): our cache names a missing one.
    with sqlite3.connect(agent.mc.state_dir / "rsync.db") as db:
        db.execute("UPDATE states SET state_id = 987654")
    assert (
        await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    ) == 987654
    message = await agent.fail("run", command="echo", image=base.uuid, directory_state_id=987654)
    assert "rsync" in message
    again = await agent.call("rsync", source=str(project), destination="/app", exclude=EXCLUDES)
    assert again not in (987654, first)
    out = await agent.call("run", command="echo ok", image=base.uuid, directory_state_id=again)
    assert out["exit_code"] == 0
