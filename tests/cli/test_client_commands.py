"""The client commands (``run``, ``images``, ``ops``, ``files``) run as a user runs them,
mostly as child processes, against a real ``sandtree serve`` on crun."""

from __future__ import annotations

import json
import re
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from clikit import Sandtree, kept

from sandtree.cli import cli
from sandtree.testing_registry import (
    Entry,
    LocalRegistry,
    TestImage,
    layer_tar,
    loopback_registries_allowed,
)

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]

BUSYBOX = "tag:busybox:latest"


@pytest.fixture(scope="module", autouse=True)
def _loopback_registries() -> Iterator[None]:
    """The servers of this module reach the test registries on 127.0.0.1 (the operator lists
    them: sandtree refuses loopback registries otherwise)."""
    with loopback_registries_allowed():
        yield


def _op_ids(sandtree: Sandtree, *filters: str) -> list[str]:
    return [op["uuid"] for op in sandtree.json("ops", "list", "--json", *filters)]


# -- run ----------------------------------------------------------------------------------------


def test_run_prints_each_line_as_the_command_writes_it_not_at_the_end(
    sandtree: Sandtree,
) -> None:
    loop = "for i in 1 2 3; do echo $i; sleep 1; done"

    with sandtree.background("run", "--image", BUSYBOX, "--", "sh", "-c", loop) as run:
        first = run.line()
        running_at_first = run.proc.poll() is None
        second = run.line()
        running_at_second = run.proc.poll() is None
        code, rest, stderr = run.finish()

    assert (first, running_at_first) == ("1\n", True)
    assert (second, running_at_second) == ("2\n", True)
    assert (code, rest, stderr) == (0, "3\n", "")


def test_run_exits_with_the_commands_exit_code(sandtree: Sandtree) -> None:
    done = sandtree("run", "--image", BUSYBOX, "--", "exit 3")

    assert (done.returncode, done.stdout, done.stderr) == (3, "", "")


def test_run_in_process_keeps_stdout_and_stderr_apart_and_exits_with_the_commands_code(
    sandtree: Sandtree,
) -> None:
    result = CliRunner().invoke(
        cli,
        ["run", "--image", BUSYBOX, "--", "echo out; echo err >&2; exit 5"],
        env=sandtree.env,
    )

    assert result.exit_code == 5, result.output
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


def test_run_past_its_timeout_is_killed_and_exits_124_with_its_output(sandtree: Sandtree) -> None:
    done = sandtree("run", "--image", BUSYBOX, "--timeout", "1", "--", "echo started; sleep 5")

    assert done.returncode == 124
    assert done.stdout == "started\n"
    assert done.stderr.startswith("timed out: the command ran past its timeout of 1 s")


def test_a_kept_run_past_its_timeout_keeps_its_image_and_says_so(sandtree: Sandtree) -> None:
    done = sandtree("run", "--json", "--image", BUSYBOX, "--keep", "--timeout", "1", "--",
                    "echo half > /root/partial; sleep 5")  # fmt: skip

    assert done.returncode == 124
    answer = json.loads(done.stdout)
    assert answer["status"] == "SUCCESS"
    assert answer["metadata"]["result"]["state"]["timed_out"] is True
    image = answer["result_image_uuid"]
    assert sandtree("images", "cat", image, "/root/partial").stdout == "half\n"


def test_run_on_a_missing_image_exits_1_with_one_error_line_and_no_traceback(
    sandtree: Sandtree,
) -> None:
    done = sandtree("run", "--image", "tag:missing:1", "--", "true")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: no image is tagged 'missing:1'")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_run_json_prints_only_the_finished_operation(sandtree: Sandtree) -> None:
    done = sandtree.json("run", "--json", "--image", BUSYBOX, "--", "echo hi; echo err >&2")

    assert done["status"] == "SUCCESS"
    result = done["metadata"]["result"]
    assert (result["stdout"]["value"], result["stderr"]["value"]) == ("hi\n", "err\n")
    assert result["state"]["exit_code"] == 0


def test_ctrl_c_on_run_cancels_the_sandbox_and_exits_130(sandtree: Sandtree) -> None:
    with sandtree.background("run", "--image", BUSYBOX, "--", "echo started; sleep 30") as run:
        assert run.line() == "started\n"
        run.proc.send_signal(signal.SIGINT)
        code, _, stderr = run.finish()
    [op_id] = _op_ids(sandtree)
    waited = sandtree("ops", "wait", op_id, "--json")

    assert (code, stderr) == (130, "")
    assert waited.returncode == 1  # it did not succeed
    assert json.loads(waited.stdout)[op_id]["status"] == "CANCELLED"


# -- images -------------------------------------------------------------------------------------


def test_images_list_shows_the_tag_and_the_whole_uuid_and_parses_as_json(
    sandtree: Sandtree,
) -> None:
    rows = sandtree.json("images", "list", "--json")
    table = sandtree.ok("images", "list")

    [row] = rows
    assert row["tag"] == "busybox:latest"
    assert re.search(rf"│ {row['uuid']} │ busybox:latest │", table)


def test_images_tag_adds_a_tag_and_untag_removes_only_that_one(sandtree: Sandtree) -> None:
    busybox = sandtree.image(BUSYBOX)

    tagged = sandtree.ok("images", "tag", BUSYBOX, "mine:1")
    resolved = sandtree.image("tag:mine:1")
    untagged = sandtree.ok("images", "untag", "tag:mine:1")
    gone = sandtree("images", "inspect", "tag:mine:1")

    assert tagged == f"{busybox} tagged mine:1\n"
    assert resolved == busybox
    assert untagged == f"{busybox} untagged mine:1\n"
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: no image is tagged 'mine:1'")
    assert sandtree.image(BUSYBOX) == busybox  # its other tag stays


def test_images_inspect_ls_cat_and_grep_read_an_image_without_a_sandbox(
    sandtree: Sandtree,
) -> None:
    busybox = sandtree.image(BUSYBOX)
    child = kept(sandtree("run", "--keep", "--image", BUSYBOX, "--", "echo hi > /root/f").stderr)

    inspected = sandtree.json("images", "inspect", child, "--json")
    described = sandtree.ok("images", "inspect", BUSYBOX)
    listing = sandtree.ok("images", "ls", BUSYBOX, "/etc")
    entries = sandtree.json("images", "ls", BUSYBOX, "/etc", "--json")["files"]
    hostname = sandtree.ok("images", "cat", BUSYBOX, "/etc/hostname")
    matches = sandtree.ok("images", "grep", BUSYBOX, "^root", "/etc")
    found = sandtree.json("images", "grep", BUSYBOX, "^root", "/etc", "--json")

    assert inspected["uuid"] == child
    assert inspected["parent"] == busybox
    assert (inspected["depth"], inspected["command"]) == (1, "echo hi > /root/f")
    assert re.search(r"^\s+depth 0$", described, re.MULTILINE)
    assert re.search(r"^\s+tag busybox:latest$", described, re.MULTILINE)
    assert re.search(r"^\s+children 1$", described, re.MULTILINE)
    assert {line.split()[-1] for line in listing.splitlines()} == {"group", "hostname", "passwd"}
    assert {e["path"] for e in entries} == {"group", "hostname", "passwd"}
    assert hostname == "sandbox\n"
    assert matches.splitlines() == ["/etc/group:1:root:x:0:",
                                    "/etc/passwd:1:root:x:0:0:root:/root:/bin/sh"]  # fmt: skip
    assert sorted(m["path"] for m in found["matches"]) == ["/etc/group", "/etc/passwd"]


def test_images_download_writes_a_file_and_x_makes_it_executable(sandtree: Sandtree) -> None:
    plain = sandtree.ok("images", "download", BUSYBOX, "/etc/passwd")
    executable = sandtree.json(
        "images", "download", BUSYBOX, "/etc/hostname", "-o", "tool", "-x", "--json"
    )

    passwd, tool = sandtree.cwd / "passwd", sandtree.cwd / "tool"
    assert plain == "/etc/passwd → passwd (112 bytes)\n"
    assert passwd.read_text(encoding="utf-8").startswith("root:x:0:0:")
    assert stat.S_IMODE(passwd.stat().st_mode) & 0o111 == 0
    assert executable == {"image": sandtree.image(BUSYBOX), "path": "/etc/hostname",
                          "destination": "tool", "bytes": 8, "directory": False}  # fmt: skip
    assert tool.read_text(encoding="utf-8") == "sandbox\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755


def test_images_download_copies_a_directorys_content_with_its_symlinks(
    sandtree: Sandtree,
) -> None:
    make = (
        "mkdir -p /root/d/sub && echo f > /root/d/f && echo g > /root/d/sub/g"
        " && ln -s /etc/passwd /root/d/abs && ln -s sub/g /root/d/rel"
    )
    image = kept(sandtree("run", "--keep", "--image", BUSYBOX, "--", make).stderr)

    sandtree.ok("images", "download", image, "/root/d")
    sandtree.ok("images", "download", image, "/root/d/", "-o", "out")

    for where in (sandtree.cwd / "d", sandtree.cwd / "out"):
        assert sorted(p.name for p in where.iterdir()) == ["abs", "f", "rel", "sub"]
        assert (where / "f").read_text(encoding="utf-8") == "f\n"
        assert (where / "sub" / "g").read_text(encoding="utf-8") == "g\n"
        assert (where / "abs").readlink() == Path("/etc/passwd")  # copied, not followed
        assert (where / "rel").read_text(encoding="utf-8") == "g\n"


def test_images_download_of_a_missing_path_exits_1_and_leaves_no_partial_file(
    sandtree: Sandtree,
) -> None:
    done = sandtree("images", "download", BUSYBOX, "/nope")

    assert done.returncode == 1
    assert done.stderr.startswith("error: /nope does not exist in the image")
    assert done.stderr.count("\n") == 1
    assert list(sandtree.cwd.iterdir()) == []


# -- images import ------------------------------------------------------------------------------

HELLO = b"hello from the registry\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry on loopback holding ``test/hello:1`` (a file, no binaries)."""
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.skip("docker-registry and skopeo are not installed")
    tmp = tmp_path_factory.mktemp("registry")
    layer = layer_tar([Entry(path="etc", kind="dir"), Entry(path="etc/hello", data=HELLO)])
    with LocalRegistry(tmp / "registry") as reg:
        reg.push_image("test/hello:1", [TestImage(layers=[layer])], tmp)
        yield reg


def test_images_import_from_a_registry_tags_the_image_and_a_missing_one_exits_1(
    sandtree: Sandtree, registry: LocalRegistry
) -> None:
    imported = sandtree("images", "import", f"docker://{registry.host}/test/hello:1",
                        "--tag", "hello:1")  # fmt: skip
    missing = sandtree("images", "import", f"docker://{registry.host}/test/missing:1")
    hello = sandtree.ok("images", "cat", "tag:hello:1", "/etc/hello")
    imports = sandtree.json("ops", "list", "--kind", "image_import", "--json")

    image = sandtree.image("tag:hello:1")
    assert (imported.returncode, imported.stderr) == (0, "")
    assert imported.stdout == f"imported {image} as hello:1\n"
    assert hello == HELLO.decode()
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith(
        f"FAILED: image test/missing:1 was not found in registry {registry.host}"
    )
    assert "MANIFEST_UNKNOWN" in missing.stderr  # the registry's error code, never its text
    assert [op["status"] for op in imports] == ["FAILED", "SUCCESS"]  # newest first


# -- ops ----------------------------------------------------------------------------------------


def test_ops_list_filters_by_kind_and_show_describes_a_run(sandtree: Sandtree) -> None:
    assert sandtree("run", "--image", BUSYBOX, "--", "exit 3").returncode == 3

    [op_id] = _op_ids(sandtree, "--kind", "instance")
    imports = _op_ids(sandtree, "--kind", "image_import")
    table = sandtree.ok("ops", "list")
    shown = sandtree.json("ops", "show", op_id, "--json")
    described = sandtree.ok("ops", "show", op_id)

    assert imports == []
    assert "instance" in table
    assert "SUCCESS" in table
    assert op_id in table  # piped output keeps whole UUIDs
    assert shown["uuid"] == op_id
    assert shown["metadata"]["result"]["state"]["exit_code"] == 3
    assert re.search(rf"^\s+uuid {op_id}$", described, re.MULTILINE)
    assert re.search(r"^\s+status SUCCESS$", described, re.MULTILINE)
    assert re.search(r"^\s+exit code 3$", described, re.MULTILINE)


def test_ops_wait_follows_runs_to_their_end_and_says_whether_all_succeeded(
    sandtree: Sandtree,
) -> None:
    slow, quick = sandtree.spawn("sleep 1; echo slow"), sandtree.spawn("echo quick")
    # An exit code (or a timeout) is the command's outcome, a success; a limit is not.
    failing = sandtree.spawn(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do mkdir /d$i; done",
        resources_limits={"max_layer_bytes": 4096},
    )

    both = sandtree("ops", "wait", slow, quick, "--json")
    with_failure = sandtree("ops", "wait", quick, failing)

    assert both.returncode == 0
    statuses = {k: v["status"] for k, v in json.loads(both.stdout).items()}
    assert statuses == {slow: "SUCCESS", quick: "SUCCESS"}
    assert with_failure.returncode == 1
    assert with_failure.stdout.splitlines() == [f"{quick} SUCCESS", f"{failing} FAILED"]


def test_ops_wait_gives_up_after_its_timeout_with_124_and_the_run_goes_on(
    sandtree: Sandtree,
) -> None:
    op_id = sandtree.spawn("sleep 30")

    done = sandtree("ops", "wait", op_id, "--timeout", "0.5")
    status = sandtree.json("ops", "show", op_id, "--json")["status"]
    sandtree.ok("ops", "cancel", op_id)

    assert (done.returncode, done.stdout) == (124, f"{op_id} still running\n")
    assert status in ("PENDING", "EXECUTING")


def test_ops_on_an_unknown_operation_exit_1_with_one_error_line(sandtree: Sandtree) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"

    results = [sandtree("ops", verb, unknown) for verb in ("show", "wait", "cancel", "logs")]

    for done in results:
        assert done.returncode == 1, done
        assert done.stderr.startswith(f"error: operation {unknown} does not exist"), done
        assert done.stderr.count("\n") == 1, done


def test_ops_cancel_stops_a_run_in_another_process_which_then_exits_130(
    sandtree: Sandtree,
) -> None:
    with sandtree.background("run", "--image", BUSYBOX, "--", "echo started; sleep 30") as run:
        assert run.line() == "started\n"
        [op_id] = _op_ids(sandtree, "--status", "EXECUTING")
        cancelled = sandtree("ops", "cancel", op_id)
        code, _, stderr = run.finish()

    assert (cancelled.returncode, cancelled.stdout) == (0, f"{op_id} CANCELLED\n")
    assert code == 130
    assert stderr.startswith("CANCELLED: the operation was cancelled")


def test_ops_logs_follow_prints_lines_as_they_come_and_logs_replays_them(
    sandtree: Sandtree,
) -> None:
    # Each line is echoed when the test feeds it: the run cannot end before stdin closes.
    op_id = sandtree.spawn("echo ready; while read n; do echo $n; done; echo oops >&2",
                           stdin_open=True)  # fmt: skip

    with sandtree.background("ops", "logs", "-f", op_id) as logs:
        ready = logs.line()  # the command runs and reads its stdin
        sandtree.feed(op_id, "1\n")
        first = logs.line()
        running_at_first = logs.proc.poll() is None
        sandtree.feed(op_id, "2\n")
        second = logs.line()
        running_at_second = logs.proc.poll() is None
        sandtree.feed(op_id, "3\n", close=True)
        code, rest, stderr = logs.finish()
    replayed = sandtree("ops", "logs", op_id)
    events = [json.loads(line) for line in sandtree.ok("ops", "logs", op_id, "--json").splitlines()]

    assert ready == "ready\n"
    assert (first, running_at_first) == ("1\n", True)
    assert (second, running_at_second) == ("2\n", True)
    assert (code, rest, stderr) == (0, "3\n", "oops\nSUCCESS \n")
    assert (replayed.returncode, replayed.stdout) == (0, "ready\n1\n2\n3\n")
    assert replayed.stderr == "oops\nSUCCESS \n"
    assert events[-1]["type"] == "completion"
    stdout = "".join(e["data"]["value"] for e in events if e["type"] == "stdout")
    assert stdout == "ready\n1\n2\n3\n"


# -- files --------------------------------------------------------------------------------------


def test_files_upload_prints_each_files_uuid_and_list_shows_them(sandtree: Sandtree) -> None:
    (sandtree.cwd / "a.txt").write_text("same\n", encoding="utf-8")
    (sandtree.cwd / "b.txt").write_text("same\n", encoding="utf-8")
    (sandtree.cwd / "c.bin").write_bytes(bytes(range(256)) * 1000)

    uploaded = sandtree.json("files", "upload", "a.txt", "b.txt", "c.bin", "--json")
    human = sandtree.ok("files", "upload", "c.bin")
    listed = sandtree.json("files", "list", "--json")
    table = sandtree.ok("files", "list")

    a, b, c = uploaded
    assert [row["path"] for row in uploaded] == ["a.txt", "b.txt", "c.bin"]
    assert a["uuid"] == b["uuid"]  # identical content is stored once
    assert c["size"] == 256_000
    assert human == f"{c['uuid']}  {c['sha256'][:12]}  c.bin\n"
    assert sorted(row["uuid"] for row in listed) == sorted({a["uuid"], c["uuid"]})
    for row in listed:
        assert row["uuid"] in table  # whole, to copy


def test_files_upload_of_a_missing_file_is_a_usage_error(sandtree: Sandtree) -> None:
    done = sandtree("files", "upload", "missing.txt")

    assert done.returncode == 2
    assert "'missing.txt' does not exist" in done.stderr


def test_with_json_an_error_is_still_one_line_on_stderr_and_nothing_on_stdout(
    sandtree: Sandtree,
) -> None:
    done = sandtree("images", "inspect", "tag:missing:1", "--json")

    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("error: no image is tagged 'missing:1'")
    assert done.stderr.count("\n") == 1
