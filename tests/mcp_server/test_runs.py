"""The run tool: its result, keeping or discarding the filesystem, what a run gets (env, cwd,
stdin, files), output truncation and large outputs, detached runs, and its errors."""

from __future__ import annotations

import pytest

from sandtree.engine import ImageQuery, ImageRecord
from sandtree.mcp._results import MAX_STREAM_CHARS

from .conftest import Agent

pytestmark = pytest.mark.anyio

ALL_IMAGES = ImageQuery(namespaces=("default",), limit=100)

#: The keys every OperationOutput of contree-mcp 0.5.0 has (its pydantic model holds these 16;
#: the surface notes say 17 but list the same names); agents read them.
REFERENCE_KEYS = {
    "uuid",
    "status",
    "kind",
    "error",
    "created_at",
    "result",
    "duration",
    "image_size",
    "consumed_cpu",
    "consumed_memory",
    "image_uuid",
    "result_image_uuid",
    "exit_code",
    "timed_out",
    "stdout",
    "stderr",
}
#: What the reference documents but never answered; we do.
DOCUMENTED_KEYS = {
    "state",
    "result_image",
    "filesystem_changed",
    "stdout_truncated",
    "stderr_truncated",
    "resources",
}


async def test_a_waited_run_answers_the_reference_keys_and_the_documented_ones(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call("run", command="echo hello", image="tag:base:1")
    assert set(out) >= REFERENCE_KEYS
    assert set(out) >= DOCUMENTED_KEYS
    assert out["status"] == out["state"] == "SUCCESS"
    assert out["kind"] == "instance"
    assert out["error"] is None
    assert out["image_uuid"] == base.uuid
    assert (out["exit_code"], out["timed_out"]) == (0, False)
    assert (out["stdout"], out["stderr"]) == ("hello\n", "")
    assert (out["stdout_truncated"], out["stderr_truncated"]) == (False, False)
    assert isinstance(out["resources"], dict)
    assert "elapsed_time" in out["resources"]
    assert out["created_at"]
    assert isinstance(out["duration"], float)
    op = agent.engine.get_operation(out["uuid"])
    assert op.status == "SUCCESS"


async def test_a_failing_command_is_a_successful_operation_with_its_exit_code(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call("run", command="echoerr it broke; exit 3", image=base.uuid)
    assert out["status"] == "SUCCESS"
    assert out["exit_code"] == 3
    assert out["stderr"] == "it broke\n"


async def test_disposable_false_keeps_the_filesystem_as_a_child_image_later_runs_start_from(
    agent: Agent, base: ImageRecord
) -> None:
    first = await agent.call(
        "run", command="write /app/one 1", image="tag:base:1", disposable=False
    )
    child = first["result_image"]
    assert first["filesystem_changed"] is True
    assert child not in (None, base.uuid)
    assert first["result_image_uuid"] == first["result"]["image"] == child
    second = await agent.call("run", command="write /app/two 2", image=child, disposable=False)
    grandchild = second["result_image"]
    assert second["image_uuid"] == child
    assert agent.engine.resolve_image(grandchild).parent == child
    assert agent.engine.resolve_image(child).parent == base.uuid
    listed = await agent.call("list_files", image=grandchild, path="/app")
    assert sorted(f["name"] for f in listed["files"]) == ["one", "two"]
    assert (await agent.call("read_file", image=grandchild, path="/app/one"))["content"] == "1"


async def test_a_disposable_run_throws_its_changes_away(agent: Agent, base: ImageRecord) -> None:
    out = await agent.call("run", command="write /app/gone x", image=base.uuid)
    assert out["exit_code"] == 0
    assert out["result_image"] is None
    assert [i.uuid for i in agent.engine.list_images(ALL_IMAGES)] == [base.uuid]


async def test_a_run_that_changes_nothing_answers_the_input_image_and_makes_no_new_one(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call("run", command="echo just looking", image=base.uuid, disposable=False)
    assert out["filesystem_changed"] is False
    assert out["result_image"] == base.uuid  # the documented meaning: no new snapshot
    assert [i.uuid for i in agent.engine.list_images(ALL_IMAGES)] == [base.uuid]


async def test_env_and_cwd_reach_the_command(agent: Agent, base: ImageRecord) -> None:
    out = await agent.call(
        "run", command="env; pwd", image=base.uuid, env={"GREETING": "hi there"}, cwd="/tmp"
    )
    lines = out["stdout"].splitlines()
    assert "GREETING=hi there" in lines
    assert lines[-1] == "/tmp"


async def test_stdin_reaches_the_command_as_text_or_non_ascii_text(
    agent: Agent, base: ImageRecord
) -> None:
    plain = await agent.call("run", command="cat", image=base.uuid, stdin="line one\nline two\n")
    assert plain["stdout"] == "line one\nline two\n"
    accented = await agent.call("run", command="cat", image=base.uuid, stdin="héllo ☃\n")
    assert accented["stdout"] == "héllo ☃\n"


async def test_uploaded_files_are_placed_at_their_paths_before_the_command(
    agent: Agent, base: ImageRecord
) -> None:
    uploaded = await agent.call("upload", content="print('hi')\n")
    out = await agent.call(
        "run",
        command="write /app/marker m",
        image=base.uuid,
        files={"/app/main.py": uploaded["uuid"], "/etc/app/conf": uploaded["uuid"]},
        disposable=False,
    )
    image = out["result_image"]
    for path in ("/app/main.py", "/etc/app/conf"):
        read = await agent.call("read_file", image=image, path=path)
        assert read["content"] == "print('hi')\n"
    listed = await agent.call("list_files", image=image, path="/app")
    modes = {f["name"]: f["mode"] for f in listed["files"]}
    assert modes["main.py"] == oct(0o100644)


async def test_an_unknown_file_uuid_is_an_error_saying_to_upload(
    agent: Agent, base: ImageRecord
) -> None:
    message = await agent.fail(
        "run",
        command="echo",
        image=base.uuid,
        files={"/app/x": "00000000-0000-4000-8000-000000000000"},
    )
    assert "upload" in message


async def test_truncate_output_at_cuts_each_stream_and_says_so(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call(
        "run",
        command=f"echo {'o' * 200}; echoerr {'e' * 200}",
        image=base.uuid,
        truncate_output_at=50,
    )
    assert out["stdout_truncated"] is True
    assert out["stderr_truncated"] is True
    assert set(out["stdout"]) == {"o"}
    assert set(out["stderr"]) == {"e"}
    assert len(out["stdout"]) == len(out["stderr"]) == 50


async def test_output_within_truncate_output_at_is_whole_and_not_flagged(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call(
        "run", command=f"echo {'o' * 200}", image=base.uuid, truncate_output_at=201
    )
    assert out["stdout"] == "o" * 200 + "\n"
    assert out["stdout_truncated"] is False


async def test_output_beyond_what_one_reply_carries_is_elided_in_the_middle_and_flagged(
    agent: Agent, base: ImageRecord
) -> None:
    text = "a" * 1000 + "m" * (MAX_STREAM_CHARS + 5000) + "z" * 1000
    out = await agent.call(
        "run", command=f"echo {text}", image=base.uuid, truncate_output_at=4 * MAX_STREAM_CHARS
    )
    assert out["exit_code"] == 0
    assert out["stdout_truncated"] is True
    assert out["stderr_truncated"] is False
    assert "characters elided" in out["stdout"]
    assert out["stdout"].startswith("a" * 1000)
    assert out["stdout"].endswith("z" * 1000 + "\n")
    assert len(out["stdout"]) < MAX_STREAM_CHARS + 100
    # The operation itself kept every byte: only the reply is shortened.
    assert agent.engine.get_operation(out["uuid"]).status == "SUCCESS"


async def test_a_run_over_its_timeout_is_reported_timed_out(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call("run", command="echo started; block", image=base.uuid, timeout=1)
    assert out["timed_out"] is True
    assert (out["state"], out["error"]) == ("SUCCESS", None)
    assert out["stdout"] == "started\n"
    assert out["exit_code"] != 0


async def test_a_kept_run_over_its_timeout_answers_the_image_it_kept(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call("run", command="write /root/partial half; block", image=base.uuid,
                           timeout=1, disposable=False)  # fmt: skip
    assert (out["timed_out"], out["state"], out["filesystem_changed"]) == (True, "SUCCESS", True)
    assert out["result_image"] not in (None, base.uuid)
    read = await agent.call("read_file", image=out["result_image"], path="/root/partial")
    assert "half" in str(read)


async def test_wait_false_answers_only_the_operation_id(agent: Agent, base: ImageRecord) -> None:
    started = await agent.call("run", command="echo later", image=base.uuid, wait=False)
    assert list(started) == ["operation_id"]
    waited = await agent.call(
        "wait_operations", operation_ids=[started["operation_id"]], timeout=30
    )
    assert waited["results"][started["operation_id"]]["stdout"] == "later\n"


@pytest.mark.parametrize("image", ["tag:python:3.11", "00000000-0000-4000-8000-000000000000"])
async def test_a_missing_image_is_an_error_naming_list_images_and_import_image(
    agent: Agent, base: ImageRecord, image: str
) -> None:
    message = await agent.fail("run", command="echo", image=image)
    assert "list_images" in message
    assert "import_image" in message


async def test_a_long_run_reports_progress_with_its_latest_output(
    agent: Agent, base: ImageRecord
) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    result = await agent.session.call_tool(
        "run",
        {"command": "echo first line; echo second line", "image": base.uuid},
        progress_callback=on_progress,
    )
    assert not result.is_error
    assert messages
    assert "first line" in (messages[0] or "")
