"""LangChain's deepagents sandbox from ``contree-sdk[langchain]`` (``ContreeSandbox``) against a
real ``sandtree serve``: its backend calls as deepagents makes them, and a real deepagents agent
driven by a scripted model.

deepagents and contree-sdk's extra live in a venv of their own (``./scripts/install``); each test
drives them through ``deepagents_driver.py`` as a child process (see ``deepagentskit.py``). The
server has two images: ``busybox:latest`` and ``python:3.11-busybox`` (busybox with the host's
python3.11, GNU grep and dash as /bin/sh: what deepagents' file operations run in the sandbox).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from contree_client.httpx import ContreeClient
from deepagentskit import (
    Driver,
    build_python_rootfs,
    call,
    python_image_missing,
    value,
    venv_missing,
)

from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import ServerProcess, real_runtime_missing

BUSYBOX = "busybox:latest"
PYTHON = "python:3.11-busybox"
_NO_RUNTIME = real_runtime_missing("the deepagents sandbox tests")
_NO_VENV = venv_missing()
_NO_PYTHON_IMAGE = python_image_missing()

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(_NO_RUNTIME is not None, reason=_NO_RUNTIME or ""),
    pytest.mark.skipif(_NO_VENV is not None, reason=_NO_VENV or ""),
    pytest.mark.skipif(_NO_PYTHON_IMAGE is not None, reason=_NO_PYTHON_IMAGE or ""),
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[ServerProcess]:
    """One server for the module (each test works in fresh sessions of its images)."""
    base = tmp_path_factory.mktemp("deepagents")
    python_rootfs = build_python_rootfs(busybox_rootfs, base / "python-rootfs")
    settings = Settings(data_dir=base / "data")

    async def import_images() -> None:
        async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
            await engine.import_local(busybox_rootfs, tag=BUSYBOX)
            await engine.import_local(python_rootfs, tag=PYTHON)

    anyio.run(import_images)
    with ServerProcess(base / "data", base / "config") as srv:
        yield srv


@pytest.fixture
def driver(server: ServerProcess) -> Driver:
    return Driver(server)


def _execute(output: str, exit_code: int) -> dict[str, Any]:
    """An ``ExecuteResponse`` as the driver reports it."""
    return {"output": output, "exit_code": exit_code, "truncated": False}


def test_commands_answer_stdout_then_stderr_and_exit_code_and_their_files_carry_to_the_next_call(
    driver: Driver,
) -> None:
    first, second = driver.calls(
        BUSYBOX,
        call("execute", "mkdir -p /work && cd /work && echo kept > notes.txt && export LEVEL=1"
                        " && echo out && echo err >&2 && pwd"),
        call("execute", "cat /work/notes.txt; pwd; echo level=$LEVEL"),
    )  # fmt: skip

    # contree-sdk joins the two streams, stdout first, as deepagents' execute tool shows them.
    assert value(first) == _execute("out\n/work\nerr\n", 0)
    # Every call is a new run on the image the previous one kept: files carry, the working
    # directory and exported variables do not (the tool's description tells agents so).
    assert value(second) == _execute("kept\n/\nlevel=\n", 0)


def test_a_failing_command_answers_its_exit_code_and_output_and_the_sandbox_keeps_working(
    driver: Driver,
) -> None:
    failed, missing, after = driver.calls(
        BUSYBOX,
        call("execute", "echo partial; echo 'no such thing' >&2; exit 3"),
        call("execute", "no-such-command"),
        call("execute", "echo still here"),
    )

    assert value(failed) == _execute("partial\nno such thing\n", 3)
    assert value(missing)["exit_code"] == 127
    assert "not found" in value(missing)["output"]
    assert value(after) == _execute("still here\n", 0)


def test_a_timed_out_command_answers_its_output_so_far_and_the_sandbox_keeps_its_files(
    driver: Driver, server: ServerProcess
) -> None:
    command = "echo partial > /root/progress; echo before; sleep 60"
    timed_out, after = driver.calls(
        BUSYBOX,
        call("execute", command, timeout=2),
        call("execute", "cat /root/progress"),
        # contree-sdk waits for a run only as long as its timeout plus operation_poll_secs_min
        # (0.1 s by default), then gives up and breaks the session; the server's kill and the
        # kept layer take about that long. A second of slack is the documented workaround.
        config={"operation_poll_secs_min": 1.0},
    )

    # What the agent sees: the output so far and SIGKILL's 137; ContreeSandbox drops the
    # result's timed_out flag, so the exit code is all it says.
    assert value(timed_out) == _execute("before\n", 137)
    assert value(after) == _execute("partial\n", 0)
    with ContreeClient(server.admin_token, base_url=server.url) as client:
        runs = [
            client.get_operation_status(str(summary.uuid))
            for summary in client.list_operations(kind="instance")
        ]
    (run,) = [r for r in runs if r.metadata.command == command]  # type: ignore[union-attr]
    assert run.status == "SUCCESS", run.error
    assert run.metadata.result.state.timed_out is True  # type: ignore[union-attr]


def test_file_operations_write_read_edit_list_glob_grep_and_delete_on_an_image_with_python(
    driver: Driver,
) -> None:
    results = driver.calls(
        PYTHON,
        call("write", "/work/src/app.py", "def greet():\n    return 'hello'\n"),
        call("edit", "/work/src/app.py", "'hello'", "'hello, sandtree'"),
        call("read", "/work/src/app.py"),
        call("write", "/work/README.md", "greet() says hello\n"),
        call("ls", "/work"),
        call("glob", "**/*.py", "/work"),
        call("grep", "hello", "/work"),
        call("execute", "cd /work/src && python3 -c 'import app; print(app.greet())'"),
        call("delete", "/work/README.md"),
        call("ls", "/work"),
        call("read", "/work/README.md"),
    )
    wrote, edited, read, _, listed, globbed, grepped, ran, deleted, relisted, gone = map(
        value, results
    )

    assert wrote["error"] is None
    assert (edited["error"], edited["occurrences"]) == (None, 1)
    # read answers lines (a page of them), so the last newline is not part of its content.
    assert read["file_data"]["content"] == "def greet():\n    return 'hello, sandtree'"
    assert sorted((e["path"], e["is_dir"]) for e in listed["entries"]) == [
        ("/work/README.md", False),
        ("/work/src", True),
    ]
    assert [m["path"] for m in globbed["matches"]] == ["/work/src/app.py"]
    assert sorted((m["path"], m["line"], m["text"]) for m in grepped["matches"]) == [
        ("/work/README.md", 1, "greet() says hello"),
        ("/work/src/app.py", 2, "    return 'hello, sandtree'"),
    ]
    assert ran == _execute("hello, sandtree\n", 0)
    assert (deleted["error"], deleted["path"]) == (None, "/work/README.md")
    assert [e["path"] for e in relisted["entries"]] == ["/work/src"]
    assert gone["error"] == "File '/work/README.md': file_not_found"


def test_uploads_and_downloads_answer_per_path_and_refuse_relative_paths(
    driver: Driver,
) -> None:
    uploaded, shown, _, downloaded = driver.calls(
        BUSYBOX,
        call("upload_files", [["/work/data.txt", "one\ntwo\n"], ["relative.txt", "x"]]),
        call("execute", "cat /work/data.txt"),
        call("execute", "echo made > /work/made.txt"),
        call("download_files", ["/work/data.txt", "/work/made.txt", "/work/nope", "relative.txt"]),
    )

    assert value(uploaded) == [
        {"path": "/work/data.txt", "error": None},
        {"path": "relative.txt", "error": "invalid_path"},
    ]
    assert value(shown) == _execute("one\ntwo\n", 0)
    data, made, nope, relative = value(downloaded)
    assert base64.b64decode(data["content"]["base64"]) == b"one\ntwo\n"
    assert base64.b64decode(made["content"]["base64"]) == b"made\n"  # what a command wrote
    assert (nope["content"], nope["error"]) == (None, "file_not_found")
    assert (relative["content"], relative["error"]) == (None, "invalid_path")


def test_on_plain_busybox_writes_fail_and_listings_and_greps_come_back_empty(
    driver: Driver,
) -> None:
    _, wrote, listed, grepped = map(
        value,
        driver.calls(
            BUSYBOX,
            call("execute", "mkdir -p /work && echo hello > /work/a.txt"),
            call("write", "/work/b.txt", "x"),
            call("ls", "/work"),
            call("grep", "hello", "/work"),
        ),
    )

    # deepagents runs these as python3 scripts and GNU grep -Z in the sandbox: an image
    # without them fails the write, and ls and grep hide the error as "nothing there".
    assert "python3: not found" in wrote["error"]
    assert (listed["error"], listed["entries"]) == (None, [])
    assert (grepped["error"], grepped["matches"]) == (None, [])


def test_a_deepagents_agent_with_a_scripted_model_writes_runs_and_fixes_a_program(
    driver: Driver,
) -> None:
    program = "import sys\nprint(len(sys.argv))\n"
    messages = driver.agent(
        PYTHON,
        "Write /work/count.py that prints how many arguments it got, and check it.",
        {"tool_calls": [{"name": "write_file",
                         "args": {"file_path": "/work/count.py", "content": program}}]},
        {"tool_calls": [{"name": "execute", "args": {"command": "python3 /work/count.py a b"}}]},
        {"tool_calls": [{"name": "edit_file",
                         "args": {"file_path": "/work/count.py", "old_string": "len(sys.argv)",
                                  "new_string": "len(sys.argv) - 1"}}]},
        {"tool_calls": [{"name": "execute", "args": {"command": "python3 /work/count.py a b"}}]},
        {"content": "count.py prints 2 for two arguments."},
    )  # fmt: skip

    tools = [(m["name"], m["content"]) for m in messages if m["type"] == "tool"]
    assert [name for name, _ in tools] == ["write_file", "execute", "edit_file", "execute"]
    assert "/work/count.py" in tools[0][1]
    # The first run sees the written file (3: the script and two arguments), the second the
    # edit: each step's effect carried to the next, as the agent meant.
    assert tools[1][1] == "3\n\n[Command succeeded with exit code 0]"
    assert "/work/count.py" in tools[2][1]
    assert tools[3][1] == "2\n\n[Command succeeded with exit code 0]"
    assert messages[-1] == {
        "type": "ai",
        "name": None,
        "content": "count.py prints 2 for two arguments.",
    }
