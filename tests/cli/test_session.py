"""``sandtree session``: git-like sessions driven as a user would, against a real server."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from clikit import Sandtree, kept

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]


def _show(sandtree: Sandtree) -> dict[str, object]:
    shown: dict[str, object] = sandtree.json("session", "show", "--json")
    return shown


def test_a_session_advances_branches_rolls_back_checks_out_and_draws_the_lineage(
    sandtree: Sandtree,
) -> None:
    busybox = sandtree.image("tag:busybox:latest")
    sandtree.ok("session", "start", "tag:busybox:latest")
    first = sandtree("run", "--keep", "--", "echo one > /root/one")
    second = sandtree("run", "--keep", "--", "echo two > /root/two")
    one, two = kept(first.stderr), kept(second.stderr)
    after_runs = _show(sandtree)
    sandtree.ok("session", "branch", "exp")
    sandtree.ok("session", "rollback")
    rolled_back = _show(sandtree)
    on_main = sandtree.ok("run", "--", "ls /root")
    sandtree.ok("session", "checkout", "exp")
    checked_out = _show(sandtree)
    on_exp = sandtree.ok("run", "--", "ls /root")
    log = sandtree.ok("session", "log").splitlines()
    tree = sandtree.ok("images", "lineage", "tag:busybox:latest").splitlines()
    added = sandtree.ok("images", "diff", two, busybox).splitlines()
    removed = sandtree.ok("images", "diff", one, two).splitlines()

    assert (first.returncode, second.returncode) == (0, 0)
    assert after_runs == {"session": "test", "branch": "main", "image": two,
                          "branches": {"main": two}}  # fmt: skip
    assert rolled_back == {"session": "test", "branch": "main", "image": one,
                           "branches": {"main": one, "exp": two}}  # fmt: skip
    assert on_main == "one\n"
    assert checked_out["branch"] == "exp"
    assert checked_out["image"] == two
    assert on_exp == "one\ntwo\n"
    assert log[0] == f"{two} (exp) "
    assert log[1].startswith("    echo two > /root/two  ")
    assert log[2] == f"{one} "
    assert log[3].startswith("    echo one > /root/one  ")
    assert log[4].startswith(f"{busybox} [busybox:latest]")  # a tag, not taken for markup
    assert tree[0].startswith(f"{busybox[:8]} busybox:latest import ")
    assert tree[0].endswith(" ◀")  # the image asked about
    assert tree[1:] == [f"└── {one[:8]} echo one > /root/one",
                        f"    └── {two[:8]} echo two > /root/two"]  # fmt: skip
    assert added == ["+ /root/one", "+ /root/two"]
    assert removed == ["- /root/two"]


def test_rollback_steps_back_several_parents_and_refuses_to_go_past_the_root(
    sandtree: Sandtree,
) -> None:
    busybox = sandtree.image("tag:busybox:latest")
    sandtree.ok("session", "start", busybox)
    for n in (1, 2, 3):
        assert sandtree("run", "--keep", "--", f"echo {n} > /root/{n}").returncode == 0

    sandtree.ok("session", "rollback", "--steps", "2")
    two_back = sandtree.ok("run", "--", "ls /root")
    too_far = sandtree("session", "rollback", "--steps", "5")
    sandtree.ok("session", "rollback", "--steps", "1")
    at_root = _show(sandtree)

    assert two_back == "1\n"
    assert too_far.returncode == 1
    assert too_far.stderr == (
        "error: the image has 1 ancestors; --steps must be between 1 and that\n"
    )
    assert at_root["image"] == busybox


def test_checkout_b_makes_a_branch_here_and_checkout_of_an_image_moves_the_branch_there(
    sandtree: Sandtree,
) -> None:
    busybox = sandtree.image("tag:busybox:latest")
    sandtree.ok("session", "start", "tag:busybox:latest")
    child = kept(sandtree("run", "--keep", "--", "touch /root/x").stderr)

    sandtree.ok("session", "checkout", "-b", "fix")
    on_fix = _show(sandtree)
    sandtree.ok("session", "checkout", busybox)
    moved = _show(sandtree)
    log = sandtree.json("session", "log", "--json")
    again = sandtree("session", "branch", "fix")

    assert on_fix == {"session": "test", "branch": "fix", "image": child,
                      "branches": {"main": child, "fix": child}}  # fmt: skip
    assert moved["branches"] == {"main": child, "fix": busybox}
    assert log["branch"] == "fix"
    assert [node["uuid"] for node in log["log"]] == [busybox]
    assert again.returncode == 1
    assert again.stderr.startswith("error: branch 'fix' exists")


def test_keep_with_an_explicit_image_or_no_change_leaves_the_branch_where_it_was(
    sandtree: Sandtree,
) -> None:
    busybox = sandtree.image("tag:busybox:latest")
    sandtree.ok("session", "start", "tag:busybox:latest")

    explicit = sandtree("run", "--keep", "--image", busybox, "--", "touch /root/x")
    unchanged = sandtree("run", "--keep", "--", "true")

    assert explicit.returncode == 0
    assert kept(explicit.stderr) != busybox
    assert unchanged.returncode == 0
    assert unchanged.stderr == f"kept {busybox} (nothing changed: same image)\n"
    assert _show(sandtree)["image"] == busybox


def test_run_without_an_image_or_a_session_says_how_to_start_one(sandtree: Sandtree) -> None:
    done = sandtree("run", "--", "true")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "error: no image to run: pass --image UUID|tag:NAME, or `sandtree session start IMAGE`\n"
    )


def test_without_sandtree_session_the_session_belongs_to_the_calling_shell(
    sandtree: Sandtree,
) -> None:
    env = {k: v for k, v in sandtree.env.items() if k != "SANDTREE_SESSION"}
    busybox = sandtree.image("tag:busybox:latest")

    started = sandtree("session", "start", "tag:busybox:latest", "--json", env=env)
    shown = sandtree("session", "show", "--json", env=env)
    other_session = _show(sandtree)

    key = f"shell-{os.getpid()}"  # this test process is the commands' parent "shell"
    saved = sandtree.state_home / "sandtree" / "sessions" / f"{key}.json"
    assert started.returncode == 0, started.stderr
    assert json.loads(shown.stdout) == {"session": key, "branch": "main", "image": busybox,
                                        "branches": {"main": busybox}}  # fmt: skip
    assert json.loads(saved.read_text(encoding="utf-8"))["branches"] == {"main": busybox}
    assert other_session == {"session": "test", "branch": "main", "image": None,
                             "branches": {}}  # fmt: skip
