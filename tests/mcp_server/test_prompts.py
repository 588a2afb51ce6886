"""Prompts: the ten recipes of the reference, with its argument names, each rendering as one
user message that walks through the tools with the arguments given."""

from __future__ import annotations

import pytest
from mcp import MCPError

from .conftest import Agent

pytestmark = pytest.mark.anyio

#: name -> (required arguments, optional arguments), as contree-mcp declares them.
PROMPTS: dict[str, tuple[set[str], set[str]]] = {
    "prepare-environment": ({"task"}, {"base", "project", "packages"}),
    "run-python": ({"code"}, set()),
    "run-shell": ({"command"}, {"image"}),
    "sync-and-run": ({"source", "command"}, {"image"}),
    "install-packages": ({"packages"}, {"image"}),
    "parallel-tasks": ({"tasks"}, {"image"}),
    "build-project": ({"source"}, {"install_cmd", "test_cmd"}),
    "debug-failure": ({"operation_id"}, set()),
    "inspect-image": ({"image"}, set()),
    "multi-stage-build": ({"source"}, {"install_cmd", "build_cmd", "test_cmd"}),
}

#: Arguments to render each prompt with, and what the text must then hold.
RENDERINGS: list[tuple[str, dict[str, str], list[str]]] = [
    (
        "prepare-environment",
        {"task": "train a model", "project": "ml", "packages": "numpy pandas"},
        ["train a model", "list_images(tag_prefix='ml/')", "ml/numpy-env/python:3.11-slim",
         "disposable=false", "set_tag"],
    ),
    ("run-python", {"code": "print(6 * 7)"}, ["print(6 * 7)", "list_images", "run("]),
    (
        "run-shell",
        {"command": "uname -a", "image": "alpine:3.20"},
        ["'uname -a'", "tag:alpine:3.20", "import_image"],
    ),
    (
        "sync-and-run",
        {"source": "/home/me/proj", "command": "make test"},
        ["rsync(source='/home/me/proj'", "__pycache__", "directory_state_id", "'make test'",
         "alpine:latest"],
    ),
    (
        "install-packages",
        {"packages": "curl git"},
        ["curl git", "disposable=false", "result_image", "ubuntu:noble"],
    ),
    (
        "parallel-tasks",
        {"tasks": "make lint\n\nmake test\n"},
        ["run(command='make lint'", "run(command='make test'", "wait=false", "wait_operations"],
    ),
    (
        "build-project",
        {"source": "/src/app", "test_cmd": "pytest -x"},
        ["rsync(source='/src/app'", "'pip install -e .'", "'pytest -x'", "disposable=false"],
    ),
    (
        "debug-failure",
        {"operation_id": "op-123"},
        ["get_operation(operation_id='op-123')", "exit_code", "stderr"],
    ),
    (
        "inspect-image",
        {"image": "tag:python:3.11"},
        ["list_files(image='tag:python:3.11'", "read_file", "grep",
         "contree://image/tag:python:3.11/lineage"],
    ),
    (
        "multi-stage-build",
        {"source": "/src/lib", "build_cmd": "make dist"},
        ["rsync(source='/src/lib'", "'make dist'", "'pytest'", "result_image"],
    ),
]  # fmt: skip


async def test_the_ten_prompts_are_listed_with_the_reference_arguments(agent: Agent) -> None:
    listed = (await agent.session.list_prompts()).prompts
    assert {p.name for p in listed} == set(PROMPTS)
    for prompt in listed:
        required, optional = PROMPTS[prompt.name]
        arguments = {a.name: a.required for a in prompt.arguments or []}
        assert {n for n, r in arguments.items() if r} == required, prompt.name
        assert {n for n, r in arguments.items() if not r} == optional, prompt.name
        assert prompt.description


def test_every_prompt_has_a_rendering_test() -> None:
    assert [name for name, _, _ in RENDERINGS] == list(PROMPTS)


@pytest.mark.parametrize(("name", "arguments", "expected"), RENDERINGS)
async def test_a_prompt_renders_as_one_user_message_using_its_arguments(
    agent: Agent, name: str, arguments: dict[str, str], expected: list[str]
) -> None:
    result = await agent.session.get_prompt(name, arguments)
    assert len(result.messages) == 1
    message = result.messages[0]
    assert message.role == "user"
    text = getattr(message.content, "text", "")
    for fragment in expected:
        assert fragment in text, f"{name}: {fragment!r} missing from:\n{text}"


@pytest.mark.parametrize("name", list(PROMPTS))
async def test_a_prompt_renders_with_only_its_required_arguments(agent: Agent, name: str) -> None:
    required, _ = PROMPTS[name]
    result = await agent.session.get_prompt(name, {arg: f"<{arg}>" for arg in required})
    text = getattr(result.messages[0].content, "text", "")
    for arg in required - {"tasks"}:
        assert f"<{arg}>" in text, f"{name} ignores {arg}"


async def test_a_prompt_without_a_required_argument_or_an_unknown_prompt_is_refused(
    agent: Agent,
) -> None:
    # The SDK answers both with a bare "Internal server error"; what matters is the refusal.
    with pytest.raises(MCPError):
        await agent.session.get_prompt("debug-failure", {})
    with pytest.raises(MCPError):
        await agent.session.get_prompt("no-such-prompt", {})
