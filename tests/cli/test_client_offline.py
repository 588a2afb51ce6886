"""The CLI without a server: help with examples everywhere, shell completion, and what a
client command says when the server is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sandtree.cli import cli

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


ALL_COMMANDS = list(_commands(cli))


def test_the_walk_finds_every_client_command() -> None:
    names = {" ".join(path) for path in ALL_COMMANDS}

    assert {"run", "images import", "images lineage", "ops logs", "files upload",
            "session checkout", "completion"} <= names  # fmt: skip


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "sandtree")
def test_help_of_every_command_and_group_shows_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])

    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_driven_by_the_sandtree_complete_variable(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])

    assert result.exit_code == 0, result.output
    assert "_SANDTREE_COMPLETE" in result.stdout


def test_the_installed_script_answers_the_bash_completion_scripts_requests() -> None:
    script = Path(sys.executable).with_name("sandtree")  # what the completion script calls
    if not script.exists():
        pytest.skip("the sandtree script is not installed next to this Python")
    env = {**os.environ, "_SANDTREE_COMPLETE": "bash_complete", "COMP_WORDS": "sandtree im",
           "COMP_CWORD": "1"}  # fmt: skip

    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["plain,images"]


def test_an_unreachable_server_is_one_line_saying_how_to_start_one_and_exit_1(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDTREE_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))

    done = subprocess.run(
        [sys.executable, "-m", "sandtree", "images", "list", "--url", UNREACHABLE],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the sandtree server at {UNREACHABLE} ")
    assert "start it with `sandtree serve`" in line


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--image", "tag:busybox", "--", "true"],
        ["ops", "list", "--json"],
        ["session", "start", "tag:busybox"],
    ],
    ids=["run", "ops list --json", "session start"],
)
def test_an_unreachable_server_named_in_the_environment_fails_the_same_way_in_process(
    args: list[str], tmp_path: Path
) -> None:
    env = {"SANDTREE_URL": UNREACHABLE, "SANDTREE_TOKEN": "st_x", "SANDTREE_SESSION": "t",
           "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state")}  # fmt: skip

    result = CliRunner().invoke(cli, args, env=env)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach the sandtree server at {UNREACHABLE}")
    assert result.stderr.count("\n") == 1
