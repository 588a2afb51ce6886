"""mini-swe-agent (``mini-swe-agent[contree]`` 2.4.6) against a real ``sandtree serve``: its own
``mini`` command, driven by its own scripted test model (``DeterministicModel``), runs
multi-step tasks in its ``ContreeEnvironment``, configured as ``docs/integrations.md`` says.

What is asserted is what the agent saw: the observation mini-swe-agent rendered for each step
(``mini.yaml``'s template, a JSON object with ``returncode`` and ``output``) and how the run
ended. mini-swe-agent lives in a venv of its own (its dependencies would move ours);
``scripts/install`` makes it at ``/var/cache/sandtree-test/mini-swe-agent-venv``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import ServerProcess, real_runtime_missing

MINI_VENV = Path("/var/cache/sandtree-test/mini-swe-agent-venv")
MINI = MINI_VENV / "bin" / "mini"

_runtime_missing = real_runtime_missing("the mini-swe-agent tests")
pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(_runtime_missing is not None, reason=_runtime_missing or ""),
    pytest.mark.skipif(
        not MINI.is_file(), reason=f"mini-swe-agent is not installed ({MINI}); scripts/install"
    ),
]

#: mini-swe-agent's own end-of-task marker: the first output line of a step that ends the run.
SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


@dataclasses.dataclass(frozen=True)
class Step:
    """One action of the agent and the observation mini-swe-agent showed it."""

    command: str
    returncode: int
    output: str
    #: Set when the environment raised instead of returning a result (mini-swe-agent's
    #: "An error occurred while executing the command: ..."), else None.
    exception_info: str | None


@dataclasses.dataclass(frozen=True)
class Trajectory:
    steps: list[Step]
    exit_status: str
    submission: str
    log: str


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[ServerProcess]:
    """One server for the module, with ``busybox:latest`` (the agent runs are independent:
    each starts its own session from the tag)."""
    tmp = tmp_path_factory.mktemp("mini-swe-agent-server")
    settings = Settings(data_dir=tmp / "data")

    async def import_busybox() -> None:
        async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
            await engine.import_local(busybox_rootfs, tag="busybox:latest")

    anyio.run(import_busybox)
    with ServerProcess(tmp / "data", tmp / "config") as srv:
        yield srv


def run_mini(
    tmp: Path,
    commands: list[str],
    environment: dict[str, Any],
    env: dict[str, str] | None = None,
) -> Trajectory:
    """``mini -c mini.yaml -c sandtree.yaml -c scripted.yaml`` as a user runs it, the scripted
    model answering ``commands`` in turn; the trajectory it saved, step by step."""
    tmp.mkdir(parents=True, exist_ok=True)
    sandtree_yaml = tmp / "sandtree.yaml"
    sandtree_yaml.write_text(yaml.safe_dump({"environment": environment}), encoding="utf-8")
    outputs = [
        {"role": "assistant", "content": f"THOUGHT: step {i}", "extra": {
            "actions": [{"command": command}], "cost": 0.0}}
        for i, command in enumerate(commands)
    ]  # fmt: skip
    scripted_yaml = tmp / "scripted.yaml"
    scripted = {
        "model": {"model_class": "deterministic", "model_name": "scripted", "outputs": outputs}
    }
    scripted_yaml.write_text(yaml.safe_dump(scripted), encoding="utf-8")
    trajectory = tmp / "run.traj.json"
    child_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CONTREE_", "NEBIUS_"))},
        # Its global config (an .env it loads) and contree-sdk's auth.ini: the test's own,
        # so nothing of the machine's user reaches the run.
        "MSWEA_GLOBAL_CONFIG_DIR": str(tmp / "mswea-config"),
        "CONTREE_HOME": str(tmp / "contree-home"),
        "MSWEA_CONFIGURED": "1",  # skip the first-start model set-up prompt
        "MSWEA_SILENT_STARTUP": "1",
        **(env or {}),
    }
    done = subprocess.run(
        [str(MINI), "-c", "mini.yaml", "-c", str(sandtree_yaml), "-c", str(scripted_yaml),
         "-t", "the scripted task", "--yolo", "--exit-immediately", "-o", str(trajectory)],
        env=child_env, cwd=tmp, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    # Its stdout replays the whole conversation: the end says how the run ended.
    log = f"mini exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert trajectory.is_file(), log
    return _parse(json.loads(trajectory.read_text(encoding="utf-8")), log)


def _parse(saved: dict[str, Any], log: str) -> Trajectory:
    messages = saved["messages"]
    steps = []
    for message, answer in itertools.pairwise(messages):
        if message["role"] != "assistant" or answer["role"] != "user":
            continue
        seen = json.loads(answer["content"])  # what mini.yaml's observation template showed
        steps.append(
            Step(
                command=message["extra"]["actions"][0]["command"],
                returncode=seen["returncode"],
                output=seen["output"],
                exception_info=seen.get("exception_info"),
            )
        )
    info = saved["info"]
    return Trajectory(steps, info["exit_status"], info["submission"], log)


#: The steps of the task: each proves one thing about the environment (see the tests).
TASK = [
    "echo draft > notes.txt; pwd",
    "cd /tmp; export LEFT_OVER=yes; pwd",
    'pwd; echo "${LEFT_OVER:-no export}"; echo "$GREETING from $PROJECT_NAME"',
    "echo oops >&2; echo partial; exit 3",
    "cat /work/notes.txt",
    f"{SUBMIT}; cat notes.txt",
]


@pytest.fixture(scope="module")
def task(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Trajectory:
    """The task run once; each test reads its own part of the trajectory."""
    environment = {
        "environment_class": "contree",
        "contree_config": {"auth": {"base_url": "CONTREE_BASE_URL", "token": "CONTREE_TOKEN"}},
        "image": "busybox:latest",
        "interpreter": ["sh", "-c"],  # busybox has no bash, mini-swe-agent's default
        "cwd": "/work",
        "env": {"GREETING": "hello"},
        "forward_env": ["PROJECT_NAME"],
        "timeout": 60,
    }
    env = {
        "CONTREE_BASE_URL": server.url,
        "CONTREE_TOKEN": server.admin_token,
        "PROJECT_NAME": "sandtree",
    }
    return run_mini(tmp_path_factory.mktemp("mini-task"), TASK, environment, env)


def test_mini_swe_agent_reads_in_a_later_step_the_file_an_earlier_step_wrote(
    task: Trajectory,
) -> None:
    assert task.steps[0].returncode == 0, task.log
    assert task.steps[4].output == "draft\n"
    assert (task.exit_status, task.submission) == ("Submitted", "draft\n")


def test_mini_swe_agent_starts_every_step_afresh_in_its_cwd_so_cd_and_export_do_not_carry_over(
    task: Trajectory,
) -> None:
    # mini-swe-agent's documented rule: every action runs in a new subshell.
    assert task.steps[0].output == "/work\n", task.log  # made by cwd_auto_create
    assert task.steps[1].output == "/tmp\n"
    assert task.steps[2].output.splitlines()[:2] == ["/work", "no export"]


def test_mini_swe_agent_passes_env_and_forwarded_variables_to_the_command(
    task: Trajectory,
) -> None:
    assert task.steps[2].output.splitlines()[2:] == ["hello from sandtree"], task.log


def test_mini_swe_agent_shows_a_failing_command_with_its_exit_code_and_both_outputs(
    task: Trajectory,
) -> None:
    failed = task.steps[3]

    assert failed.returncode == 3, task.log
    assert failed.output == "partial\noops\n"  # stdout, then stderr: the SDK keeps them apart
    assert failed.exception_info is None


def test_mini_swe_agent_sees_a_command_past_its_timeout_killed_and_keeps_working(
    server: ServerProcess, tmp_path: Path
) -> None:
    environment = {
        "environment_class": "contree",
        "contree_config": {
            "auth": {"base_url": server.url, "token": server.admin_token},
            # contree-sdk's last look at a run comes this long after the run's timeout: room
            # for the server to kill it and record the result (docs/integrations.md).
            "operation_poll_secs_min": 1.0,
        },
        "image": "busybox:latest",
        "interpreter": ["sh", "-c"],
        "cwd": "/work",
        "timeout": 2,
    }
    commands = ["echo kept > kept.txt", "echo started; sleep 60", "cat kept.txt", SUBMIT]

    run = run_mini(tmp_path, commands, environment)

    timed_out = run.steps[1]
    assert timed_out.exception_info is None, run.log
    assert timed_out.returncode == 128 + 9  # killed with SIGKILL at the timeout
    assert timed_out.output == "started\n"
    assert run.steps[2].output == "kept\n"  # the same session goes on after the timeout
    assert run.exit_status == "Submitted"


def test_mini_swe_agent_with_a_shorter_limit_in_its_interpreter_never_races_the_sdk(
    server: ServerProcess, tmp_path: Path
) -> None:
    # The command ends itself after 2 s, well before the run's timeout, which is also when
    # contree-sdk stops waiting; busybox's timeout cannot kill the sandbox's pid 1, so a
    # shell that is not exec'd away (the `|| exit`) stays pid 1 and timeout is its child.
    environment = {
        "environment_class": "contree",
        "contree_config": {"auth": {"base_url": server.url, "token": server.admin_token}},
        "image": "busybox:latest",
        "interpreter": ["sh", "-c", "'timeout -s KILL 2 sh -c \"$1\" || exit $?'", "sh"],
        "cwd": "/work",
        "timeout": 30,
    }
    commands = ["echo kept > kept.txt", "echo started; sleep 60", "cat kept.txt", SUBMIT]

    run = run_mini(tmp_path, commands, environment)

    limited = run.steps[1]
    assert limited.exception_info is None, run.log
    assert limited.returncode == 128 + 9
    assert limited.output.startswith("started\n")
    assert run.steps[2].output == "kept\n"
    assert run.exit_status == "Submitted"
