"""Runs on the fake runtime: what a run sees, what it produces, and how it can fail."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from sandtree.engine import (
    Engine,
    ImageQuery,
    ImageRecord,
    OperationRecord,
    OperationStatus,
    PlacedFile,
    RunSpec,
)
from sandtree.engine._runs import DEFAULT_PATH
from sandtree.engine.runtime import FakeRuntime
from sandtree.engine.runtime._base import SandboxExit, SandboxSpec
from sandtree.engine.runtime._fake import FakeSandbox
from sandtree.engine.types import PUBLIC_NAMESPACE
from sandtree.errors import (
    FileNotFoundInStoreError,
    ImageNotFoundError,
    InvalidRequestError,
    PathNotFoundError,
)
from sandtree.testing import make_engine, read_file, run_command

pytestmark = pytest.mark.anyio


def _stdout(op: OperationRecord) -> str:
    assert op.result is not None, op.error
    value: str = op.result["stdout"]["value"]
    return value


def _env_lines(op: OperationRecord) -> dict[str, str]:
    return dict(line.split("=", 1) for line in _stdout(op).splitlines())


def _host_path_exists(path: str) -> bool:
    return os.path.lexists(path)


def _image_count(engine: Engine) -> int:
    return len(engine.list_images(ImageQuery(limit=1000)))


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- images made by runs ---------------------------------------------------------------------


async def test_disposable_run_makes_no_image(engine: Engine, base: ImageRecord) -> None:
    before = _image_count(engine)

    op = await run_command(engine, "write /tmp/x data; echo done", base, disposable=True)

    assert op.status == OperationStatus.SUCCESS
    assert op.result_image is None
    assert op.result is not None
    assert op.result["result_image"] is None
    assert _stdout(op) == "done\n"
    assert _image_count(engine) == before


async def test_run_with_disposable_false_creates_child_image(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "write /tmp/hello.txt hello world", base)

    assert op.status == OperationStatus.SUCCESS
    assert op.result is not None
    assert op.result["filesystem_changed"] is True
    assert op.result_image is not None
    assert op.result["result_image"] == op.result_image
    child = engine.resolve_image(op.result_image)
    assert child.parent == base.uuid
    assert child.depth == base.depth + 1 == 1
    assert child.command == "write /tmp/hello.txt hello world"
    assert child.operation == op.uuid
    assert child.layers[:-1] == base.layers
    assert read_file(engine, child, "/tmp/hello.txt") == b"hello world"
    with pytest.raises(PathNotFoundError):
        engine.open_file(base, "/tmp/hello.txt")


async def test_run_that_changes_nothing_returns_its_input_image(
    engine: Engine, base: ImageRecord
) -> None:
    before = _image_count(engine)

    op = await run_command(engine, "echo just looking", base)

    assert op.status == OperationStatus.SUCCESS
    assert op.result is not None
    assert op.result["filesystem_changed"] is False
    assert op.result["result_image"] == base.uuid
    assert op.result_image == base.uuid
    assert _image_count(engine) == before
    assert engine.lineage(base).children == []


async def test_file_deleted_in_child_is_gone_there_and_below_but_not_in_parent(
    engine: Engine, base: ImageRecord
) -> None:
    first = await run_command(engine, "write /srv/doomed.txt bye; write /srv/kept.txt hi", base)
    assert first.result_image is not None
    parent = engine.resolve_image(first.result_image)
    second = await run_command(engine, "rm /srv/doomed.txt", parent)
    assert second.result_image is not None
    child = engine.resolve_image(second.result_image)
    third = await run_command(engine, "write /srv/later.txt later", child)
    assert third.result_image is not None
    grandchild = engine.resolve_image(third.result_image)

    assert second.result is not None
    assert second.result["filesystem_changed"] is True
    assert read_file(engine, parent, "/srv/doomed.txt") == b"bye"
    for image in (child, grandchild):
        with pytest.raises(PathNotFoundError):
            engine.open_file(image, "/srv/doomed.txt")
        assert "doomed.txt" not in {item.path for item in engine.list_dir(image, "/srv")}
        assert read_file(engine, image, "/srv/kept.txt") == b"hi"
    assert [i.path for i in engine.list_dir(grandchild, "/srv")] == ["kept.txt", "later.txt"]


class ChmodRuntime(FakeRuntime):
    """The fake runtime plus ``chmod MODE PATH`` as the whole command (run before the rest)."""

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        verb, *args = spec.args[-1].split()
        if verb == "chmod":
            mode, path = args
            os.chmod(spec.rootfs / path.lstrip("/"), int(mode, 8))
            spec = dataclasses.replace(spec, args=[*spec.args[:-1], "echo changed"])
        return await super().start(spec)


async def test_run_that_only_changes_a_directory_mode_makes_a_child(
    tmp_path: Path, rootfs: Path
) -> None:
    async with make_engine(tmp_path / "data", runtime=ChmodRuntime()) as engine:
        base = await engine.import_local(rootfs)
        assert engine.stat_path(base, "/tmp").mode & 0o7777 == 0o1777

        op = await run_command(engine, "chmod 0700 /tmp", base)

        assert op.status == OperationStatus.SUCCESS, op.error
        assert op.result is not None
        assert op.result["filesystem_changed"] is True
        assert op.result_image is not None
        assert op.result_image != base.uuid
        child = engine.resolve_image(op.result_image)
        assert engine.stat_path(child, "/tmp").mode & 0o7777 == 0o700


async def test_run_without_shell_uses_the_command_and_makes_a_child(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "write /plain.txt no-shell", base, shell=False)

    assert op.status == OperationStatus.SUCCESS
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert child.command == "write /plain.txt no-shell"
    assert read_file(engine, child, "/plain.txt") == b"no-shell"


# -- environment and working directory -------------------------------------------------------


@pytest.fixture
async def image_with_env(engine: Engine, base: ImageRecord) -> ImageRecord:
    """A child of ``base`` whose config sets FOO, KEEP and PATH."""
    env = {"FOO": "from-image", "KEEP": "kept", "PATH": "/opt/bin:/bin"}
    op = await run_command(engine, "echo setting env", base, env=env, preserve_env=True)
    assert op.result_image is not None
    image = engine.resolve_image(op.result_image)
    assert image.env_map == env
    return image


async def test_shell_run_merges_the_image_env_with_the_request_env(
    engine: Engine, image_with_env: ImageRecord
) -> None:
    op = await run_command(engine, "env", image_with_env, env={"FOO": "from-request", "NEW": "1"})

    assert _env_lines(op) == {
        "PATH": "/opt/bin:/bin",
        "FOO": "from-request",
        "KEEP": "kept",
        "NEW": "1",
    }


async def test_run_without_shell_does_not_get_the_image_env(
    engine: Engine, image_with_env: ImageRecord
) -> None:
    op = await run_command(engine, "env", image_with_env, shell=False, env={"NEW": "1"})

    assert _env_lines(op) == {"PATH": DEFAULT_PATH, "NEW": "1"}


async def test_env_value_none_removes_a_variable(
    engine: Engine, image_with_env: ImageRecord
) -> None:
    op = await run_command(engine, "env", image_with_env, env={"FOO": None, "PATH": None})

    assert _env_lines(op) == {"KEEP": "kept"}


async def test_path_defaults_when_neither_image_nor_request_sets_it(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "env", base)

    assert _env_lines(op) == {"PATH": DEFAULT_PATH}


async def test_spawn_event_masks_secret_looking_variables(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "env", base, env={"GITHUB_TOKEN": "s3cr3t", "PLAIN": "visible"})

    assert _env_lines(op)["GITHUB_TOKEN"] == "s3cr3t"  # the process itself gets the value
    events = [e async for e in engine.follow_events(op, follow=False)]
    spawn = next(e for e in events if e.type == "spawn")
    assert spawn.data["env"]["GITHUB_TOKEN"] == "<MASKED>"
    assert spawn.data["env"]["PLAIN"] == "visible"
    assert all("s3cr3t" not in str(e.data) for e in events if e.type != "stdout")


async def test_cwd_defaults_to_the_image_cwd(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "pwd", base)

    assert _stdout(op) == "/\n"
    assert op.result_image == base.uuid


async def test_missing_cwd_is_created_owned_by_the_run_user(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "pwd", base, cwd="/work/deep/dir", uid=1000, gid=1000)

    assert op.status == OperationStatus.SUCCESS, op.error
    assert _stdout(op) == "/work/deep/dir\n"
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    item = engine.stat_path(child, "/work/deep/dir")
    assert item.is_dir
    assert (item.uid, item.gid) == (1000, 1000)
    assert child.cwd == base.cwd == "/"  # not preserved unless asked


async def test_preserve_env_makes_a_child_without_filesystem_changes(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "echo hi", base, env={"LANG": "C.UTF-8"}, preserve_env=True)

    assert op.result is not None
    assert op.result["filesystem_changed"] is False
    assert op.result_image is not None
    assert op.result_image != base.uuid
    child = engine.resolve_image(op.result_image)
    assert child.parent == base.uuid
    assert child.layers == base.layers
    assert child.env_map == {"LANG": "C.UTF-8"}

    again = await run_command(engine, "env", child)
    assert _env_lines(again)["LANG"] == "C.UTF-8"


async def test_preserve_env_with_none_removes_the_variable_from_the_child(
    engine: Engine, image_with_env: ImageRecord
) -> None:
    op = await run_command(engine, "echo hi", image_with_env, env={"FOO": None}, preserve_env=True)

    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert child.env_map == {"KEEP": "kept", "PATH": "/opt/bin:/bin"}


async def test_preserve_env_removes_a_variable_set_to_the_empty_string(
    engine: Engine, image_with_env: ImageRecord
) -> None:
    # The API contract: "Setting a variable to an empty string or null removes it from the
    # preserved environment", while the run itself still sees FOO="".
    op = await run_command(engine, "env", image_with_env, env={"FOO": ""}, preserve_env=True)

    assert _env_lines(op)["FOO"] == ""
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert "FOO" not in child.env_map


async def test_preserve_env_with_the_same_env_makes_no_child(
    engine: Engine, image_with_env: ImageRecord
) -> None:
    op = await run_command(engine, "echo hi", image_with_env, env={"FOO": "from-image"},
                    preserve_env=True)  # fmt: skip

    assert op.result_image == image_with_env.uuid


async def test_preserve_cwd_makes_a_child_with_the_new_cwd(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "pwd", base, cwd="/tmp", preserve_cwd=True)

    assert op.result is not None
    assert op.result["filesystem_changed"] is False
    assert op.result_image is not None
    assert op.result_image != base.uuid
    child = engine.resolve_image(op.result_image)
    assert child.cwd == "/tmp"
    assert child.layers == base.layers

    again = await run_command(engine, "pwd", child)
    assert _stdout(again) == "/tmp\n"


async def test_preserve_cwd_with_a_missing_cwd_creates_it_in_the_child(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "pwd", base, cwd="/home/user/project", preserve_cwd=True)

    assert op.result is not None
    assert op.result["filesystem_changed"] is True
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert child.cwd == "/home/user/project"
    assert engine.stat_path(child, "/home/user/project").is_dir


# -- streams ---------------------------------------------------------------------------------


async def test_stdout_and_stderr_are_captured_separately(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "echo out; echoerr err; echo more", base)

    assert op.result is not None
    assert op.result["stdout"] == {"value": "out\nmore\n", "encoding": "ascii", "truncated": False}
    assert op.result["stderr"] == {"value": "err\n", "encoding": "ascii", "truncated": False}


async def test_stdout_past_truncate_output_at_is_cut_and_reported(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "echo 0123456789", base, truncate_output_at=4)

    assert op.status == OperationStatus.SUCCESS
    assert op.result is not None
    assert op.result["stdout"] == {"value": "0123", "encoding": "ascii", "truncated": True}
    assert op.result["stderr"]["truncated"] is False
    events = [e async for e in engine.follow_events(op, follow=False)]
    truncated = [e for e in events if e.type == "truncated"]
    assert len(truncated) == 1
    assert truncated[0].data == {"stream": "stdout", "bytes_emitted": 4, "bytes_dropped": 7}
    assert "".join(e.data["value"] for e in events if e.type == "stdout") == "0123"


async def test_output_exactly_at_the_limit_is_not_truncated(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "echo 123", base, truncate_output_at=4)

    assert op.result is not None
    assert op.result["stdout"] == {"value": "123\n", "encoding": "ascii", "truncated": False}
    events = [e async for e in engine.follow_events(op, follow=False)]
    assert "truncated" not in {e.type for e in events}


async def test_stdin_is_delivered_to_the_command(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "cat", base, stdin=b"line one\nline two\n")

    assert _stdout(op) == "line one\nline two\n"


async def test_binary_output_is_base64_encoded(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "cat", base, stdin=b"\x00\xff\x01")

    assert op.result is not None
    assert op.result["stdout"] == {"value": "AP8B", "encoding": "base64", "truncated": False}


# -- how runs end ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
async def test_exit_code_is_reported_and_the_operation_succeeds(
    engine: Engine, base: ImageRecord, code: int
) -> None:
    op = await run_command(engine, f"echo before; exit {code}; echo after", base)

    assert op.status == OperationStatus.SUCCESS
    assert op.error is None
    assert op.result is not None
    assert op.result["state"]["exit_code"] == code
    assert op.result["state"]["timed_out"] is False
    assert _stdout(op) == "before\n"


async def test_unknown_command_exits_127(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "frobnicate", base)

    assert op.result is not None
    assert op.result["state"]["exit_code"] == 127
    assert "frobnicate" in op.result["stderr"]["value"]


async def test_out_of_memory_fails_naming_the_memory_limit(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "write /tmp/partial x; oom", base)

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "memory" in op.error
    assert str(engine.settings.memory_limit_bytes) in op.error
    assert op.result is not None
    assert op.result["limit_hit"] == "memory"
    assert op.result_image is None
    assert engine.lineage(base).children == []


async def test_fork_bomb_fails_naming_the_process_limit(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "forkbomb", base)

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "process limit" in op.error
    assert str(engine.settings.pids_limit) in op.error
    assert op.result is not None
    assert op.result["limit_hit"] == "pids"


async def test_run_past_its_timeout_fails_with_timed_out(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "echo started; block", base, timeout=1)

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "timeout of 1 s" in op.error
    assert op.result is not None
    assert op.result["state"]["timed_out"] is True
    assert op.result["stdout"]["value"] == "started\n"
    assert op.result_image is None
    events = [e async for e in engine.follow_events(op, follow=False)]
    shutdown = next(e for e in events if e.type == "shutdown")
    assert shutdown.data["reason"] == "timeout"
    assert next(e for e in events if e.type == "exit").data["timed_out"] is True


async def test_timeout_is_reported_as_the_limit_hit(engine: Engine, base: ImageRecord) -> None:
    # RunResult.limit_hit documents "timeout" as one of its values.
    op = await run_command(engine, "block", base, timeout=1)

    assert op.result is not None
    assert op.result["limit_hit"] == "timeout"


@pytest.mark.parametrize("code", [0, 1])
async def test_writing_past_max_layer_bytes_fails_naming_the_limit(
    engine: Engine, base: ImageRecord, code: int
) -> None:
    op = await run_command(
        engine, f"write /big 0123456789abcdef; exit {code}", base, max_layer_bytes=8
    )

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "max_layer_bytes=8" in op.error
    assert op.result_image is None


class _ExecFailureSandbox(FakeSandbox):
    async def _run(self) -> SandboxExit:
        return SandboxExit(exit_code=1, runtime_error="exec: /bin/nope: no such file")


class _BrokenRuntime(FakeRuntime):
    """Fails every run: ``start`` raises for ``explode``, else the command cannot exec."""

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        if spec.args[-1] == "explode":
            raise OSError("runtime binary vanished")
        self.started.append(spec)
        return _ExecFailureSandbox(spec, 4242)


@pytest.mark.parametrize(
    ("command", "message"),
    [("explode", "runtime binary vanished"), ("anything", "could not start the command")],
)
async def test_run_whose_sandbox_cannot_start_fails_and_leaves_nothing_behind(
    tmp_path: Path, rootfs: Path, command: str, message: str
) -> None:
    async with make_engine(tmp_path / "data", runtime=_BrokenRuntime()) as engine:
        base = await engine.import_local(rootfs)
        op = await run_command(engine, command, base)
        events = [e async for e in engine.follow_events(op, follow=False)]
        runs_left = list(engine.layers.runs_dir.iterdir())
        children = engine.lineage(base).children

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert message in op.error
    assert op.result_image is None
    assert events[-1].type == "completion"
    assert events[-1].data["status"] == "FAILED"
    assert children == []
    if command == "explode":  # the failed start is cleaned up before the op ends
        assert runs_left == []


# -- requests refused at spawn ---------------------------------------------------------------


async def test_unknown_tag_is_image_not_found(engine: Engine, base: ImageRecord) -> None:
    with pytest.raises(ImageNotFoundError):
        await engine.spawn(RunSpec(image="tag:nope", command="echo"))


async def test_unknown_image_uuid_is_image_not_found(engine: Engine, base: ImageRecord) -> None:
    with pytest.raises(ImageNotFoundError):
        await engine.spawn(RunSpec(image="00000000-0000-4000-8000-000000000000", command="echo"))


async def test_malformed_image_reference_is_invalid(engine: Engine, base: ImageRecord) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.spawn(RunSpec(image="busybox", command="echo"))


@pytest.mark.parametrize("timeout", [0, -5, 3601])
async def test_timeout_out_of_range_is_invalid(
    engine: Engine, base: ImageRecord, timeout: int
) -> None:
    with pytest.raises(InvalidRequestError, match="timeout"):
        await engine.spawn(RunSpec(image="tag:base", command="echo", timeout=timeout))


async def test_unknown_isolation_tier_is_invalid(engine: Engine, base: ImageRecord) -> None:
    with pytest.raises(InvalidRequestError, match="isolation"):
        await engine.spawn(RunSpec(image="tag:base", command="echo", isolation="vm"))


async def test_network_without_a_pool_is_invalid(engine: Engine, base: ImageRecord) -> None:
    with pytest.raises(InvalidRequestError, match="network"):
        await engine.spawn(RunSpec(image="tag:base", command="echo", network=True))


async def test_unknown_file_uuid_is_refused(engine: Engine, base: ImageRecord) -> None:
    placed = PlacedFile(uuid="11111111-1111-4111-8111-111111111111", path="/root/x")

    with pytest.raises(FileNotFoundInStoreError):
        await engine.spawn(RunSpec(image="tag:base", command="echo", files=(placed,)))


async def test_file_of_another_namespace_cannot_be_placed(
    engine: Engine, base: ImageRecord
) -> None:
    record = await engine.upload_file(_chunks(b"tenant B's data"), namespace="other")
    placed = PlacedFile(uuid=record.uuid, path="/root/stolen")

    with pytest.raises(FileNotFoundInStoreError):
        await engine.spawn(RunSpec(image="tag:base", command="echo", files=(placed,)))


async def test_image_of_another_namespace_is_not_found(engine: Engine, rootfs: Path) -> None:
    other = await engine.import_local(rootfs, namespace="other")

    with pytest.raises(ImageNotFoundError):
        await engine.spawn(RunSpec(image=other.uuid, command="echo"))


async def test_child_of_a_public_image_belongs_to_the_namespace_that_ran_it(
    engine: Engine, rootfs: Path
) -> None:
    public = await engine.import_local(rootfs, namespace=PUBLIC_NAMESPACE)
    op = await engine.spawn(
        RunSpec(image=public.uuid, command="write /mine 1", shell=True), namespace="team"
    )
    with anyio.fail_after(10):
        done = await engine.wait_operation(op)

    assert done.status == OperationStatus.SUCCESS, done.error
    assert done.namespace == "team"
    assert done.result_image is not None
    # The team made it, so the team must see it, and another namespace must not.
    child = engine.resolve_image(done.result_image, namespaces=("team",))
    assert child.namespace == "team"
    assert child.parent == public.uuid
    assert not child.public
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image(done.result_image, namespaces=("other",))


# -- placed files ----------------------------------------------------------------------------


async def test_placed_file_has_its_content_mode_and_owner(
    engine: Engine, base: ImageRecord
) -> None:
    record = await engine.upload_file(_chunks(b"secret ", b"key\n"))
    placed = PlacedFile(uuid=record.uuid, path="/root/key", mode=0o600, uid=1000, gid=1000)

    op = await run_command(engine, "cat", base, files=(placed,))

    assert op.status == OperationStatus.SUCCESS, op.error
    assert op.result is not None
    assert op.result["filesystem_changed"] is True
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert read_file(engine, child, "/root/key") == b"secret key\n"
    item = engine.stat_path(child, "/root/key")
    assert item.is_regular
    assert item.mode & 0o7777 == 0o600
    assert (item.uid, item.gid) == (1000, 1000)
    assert (item.owner, item.group) == ("user", "user")
    # On the host the file belongs to the shifted ids.
    with engine.mounted(child) as root:
        st = os.lstat(root / "root" / "key")
    shift = engine.settings.uid_shift
    assert (st.st_uid, st.st_gid) == (shift + 1000, shift + 1000)


async def test_placed_file_creates_missing_parents(engine: Engine, base: ImageRecord) -> None:
    record = await engine.upload_file(_chunks(b"cfg"))
    placed = PlacedFile(uuid=record.uuid, path="/opt/app/conf/app.ini", uid=1000, gid=1000)

    op = await run_command(engine, "echo", base, files=(placed,))

    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert read_file(engine, child, "/opt/app/conf/app.ini") == b"cfg"
    assert engine.stat_path(child, "/opt/app").is_dir


async def test_placed_file_is_visible_to_the_command(engine: Engine, base: ImageRecord) -> None:
    record = await engine.upload_file(_chunks(b"payload"))
    placed = PlacedFile(uuid=record.uuid, path="/tmp/in.txt")

    op = await run_command(engine, "rm /tmp/in.txt", base, files=(placed,), disposable=True)

    # ``rm`` would fail (and so the run) if the file had not been placed before it started.
    assert op.status == OperationStatus.SUCCESS, op.error
    assert op.result is not None
    assert op.result["state"]["exit_code"] == 0


def _hostile_rootfs(dest: Path, host_dir: Path, host_file: Path) -> Path:
    """A tiny rootfs whose /etc/evil points at a host directory and /etc/evilfile at a host file.

    The host directory's path also exists *inside* the image, as the kernel would resolve it
    in the sandbox.
    """
    (dest / "etc").mkdir(parents=True)
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n", encoding="utf-8")
    (dest / "root").mkdir()
    (dest / "etc" / "evil").symlink_to(host_dir)
    (dest / "etc" / "evilfile").symlink_to(host_file)
    (dest / "etc" / "dangling").symlink_to(host_dir / "nowhere")
    (dest / "etc" / "up").symlink_to("../../../../../../../..")
    inside = dest / str(host_dir).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "image-owned").write_text("image\n", encoding="utf-8")
    return dest


@pytest.fixture
async def hostile(engine: Engine, tmp_path: Path) -> tuple[ImageRecord, Path, Path]:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    host_file = tmp_path / "host-file"
    host_file.write_bytes(b"host content\n")
    rootfs = _hostile_rootfs(tmp_path / "hostile-rootfs", host_dir, host_file)
    image = await engine.import_local(rootfs, tag="hostile")
    return image, host_dir, host_file


async def test_placed_file_through_a_symlinked_dir_stays_inside_the_root(
    engine: Engine, hostile: tuple[ImageRecord, Path, Path]
) -> None:
    image, host_dir, _ = hostile
    record = await engine.upload_file(_chunks(b"dropped"))
    placed = PlacedFile(uuid=record.uuid, path="/etc/evil/x")

    op = await run_command(engine, "echo", image, files=(placed,))

    assert op.status == OperationStatus.SUCCESS, op.error
    assert list(host_dir.iterdir()) == []
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    # The symlink was resolved inside the image: the file sits at the image's own copy.
    assert read_file(engine, child, str(host_dir / "x")) == b"dropped"
    assert read_file(engine, child, "/etc/evil/x") == b"dropped"


async def test_placed_file_over_a_symlink_to_a_host_file_replaces_the_link(
    engine: Engine, hostile: tuple[ImageRecord, Path, Path]
) -> None:
    image, _, host_file = hostile
    record = await engine.upload_file(_chunks(b"overwritten?"))
    placed = PlacedFile(uuid=record.uuid, path="/etc/evilfile")

    op = await run_command(engine, "echo", image, files=(placed,))

    assert op.status == OperationStatus.SUCCESS, op.error
    assert host_file.read_bytes() == b"host content\n"
    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    item = engine.stat_path(child, "/etc/evilfile")
    assert item.is_regular
    assert not item.is_symlink
    assert read_file(engine, child, "/etc/evilfile") == b"overwritten?"


async def test_placed_file_through_a_dangling_symlink_fails_without_touching_the_host(
    engine: Engine, hostile: tuple[ImageRecord, Path, Path]
) -> None:
    image, host_dir, _ = hostile
    record = await engine.upload_file(_chunks(b"x"))
    placed = PlacedFile(uuid=record.uuid, path="/etc/dangling/x")

    op = await run_command(engine, "echo", image, files=(placed,))

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "symlink" in op.error
    assert list(host_dir.iterdir()) == []


async def test_placed_file_with_dotdot_stays_inside_the_root(
    engine: Engine, hostile: tuple[ImageRecord, Path, Path], tmp_path: Path
) -> None:
    image, _, _ = hostile
    record = await engine.upload_file(_chunks(b"climb"))
    placed = PlacedFile(uuid=record.uuid, path="/etc/up/../../escaped.txt")

    op = await run_command(engine, "echo", image, files=(placed,))

    assert op.status == OperationStatus.SUCCESS, op.error
    assert not (tmp_path / "escaped.txt").exists()
    assert not _host_path_exists("/escaped.txt")
    assert op.result_image is not None
    assert read_file(engine, engine.resolve_image(op.result_image), "/escaped.txt") == b"climb"
