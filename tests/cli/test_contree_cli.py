"""The public ConTree CLI (`contree-cli` from PyPI) against a real `sandtree serve`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sandtree.testing import ServerProcess

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
    pytest.mark.skipif(shutil.which("contree") is None, reason="contree-cli is not installed"),
]


class Contree:
    """Runs ``contree`` as a user would, with its own config home and session."""

    def __init__(self, server: ServerProcess, home: Path) -> None:
        self.server = server
        self.env = {
            **os.environ,
            "CONTREE_HOME": str(home),
            "CONTREE_NO_UPDATE_CHECK": "1",
            "CONTREE_SESSION": "sandtree-test",
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["contree", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"contree {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture
def contree(busybox_server: ServerProcess, tmp_path: Path) -> Contree:
    cli = Contree(busybox_server, tmp_path / "contree-home")
    cli.ok("auth", "--token", busybox_server.admin_token, "-u", busybox_server.url,
           "--type", "jwt")  # fmt: skip
    return cli


def test_contree_cli_runs_reads_and_branches_against_our_server(contree: Contree) -> None:
    contree.ok("use", "tag:busybox:latest")
    assert contree.ok("run", "--", "echo", "hello") == "hello\n"
    contree.ok("run", "--", "sh", "-c", "echo kept > /root/kept")
    assert contree.ok("cat", "/root/kept") == "kept\n"
    assert "hostname" in contree.ok("ls", "/etc")
    assert "busybox:latest" in contree.ok("images")

    contree.ok("session", "branch", "experiment")
    contree.ok("session", "checkout", "experiment")
    contree.ok("run", "--", "sh", "-c", "echo risky > /root/risky")
    assert contree.ok("cat", "/root/risky") == "risky\n"
    contree.ok("session", "checkout", "main")
    missing = contree("cat", "/root/risky")
    assert missing.returncode != 0
    history = contree.ok("session", "show")
    assert re.search(r"echo kept > /root/kept", history)


def test_contree_cli_reports_a_failing_command_with_its_exit_code(contree: Contree) -> None:
    contree.ok("use", "tag:busybox:latest")
    done = contree("run", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert done.returncode == 3
    assert "oops" in done.stderr


def test_contree_cli_attaches_a_local_directory_to_a_run(contree: Contree, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "a.txt").write_text("a\n")
    (project / "sub" / "b.txt").write_text("b\n")
    contree.ok("use", "tag:busybox:latest")

    listed = contree.ok(
        "run", "-F", f"{project}:/app", "--", "sh", "-c", "find /app -type f | sort"
    )

    assert listed == "/app/a.txt\n/app/sub/b.txt\n"
    assert contree.ok("run", "--", "cat", "/app/sub/b.txt") == "b\n"  # kept in the session


def test_contree_cli_shows_a_timed_out_command_its_output_and_keeps_the_session(
    contree: Contree,
) -> None:
    contree.ok("use", "tag:busybox:latest")

    done = contree(
        "run", "-t", "1", "--", "sh", "-c", "echo before > /root/f; echo started; sleep 9"
    )

    # contree-cli reads the completed result's state.timed_out, as the reference reports it.
    assert done.returncode != 0
    assert done.stdout == "started\n"
    assert "timed out after 1s" in done.stderr
    assert "FAILED" not in done.stderr
    assert contree.ok("run", "--", "cat", "/root/f") == "before\n"  # the session goes on
