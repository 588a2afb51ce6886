"""Runs on the fake runtime: what a run is given (environment, working directory, what it
keeps of them) and the requests refused before it starts."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from runkit import chunks, stdout

from sandtree.engine import (
    Engine,
    ImageRecord,
    OperationRecord,
    OperationStatus,
    PlacedFile,
    RunSpec,
)
from sandtree.engine._runs import DEFAULT_PATH
from sandtree.engine.types import PUBLIC_NAMESPACE
from sandtree.errors import FileNotFoundInStoreError, ImageNotFoundError, InvalidRequestError
from sandtree.testing import run_command

pytestmark = pytest.mark.anyio


def _env_lines(op: OperationRecord) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout(op).splitlines())


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


async def test_spawn_event_masks_every_value_the_request_set_and_shows_image_defaults(
    engine: Engine, base: ImageRecord
) -> None:
    asked = {"GITHUB_TOKEN": "s3cr3t", "DATABASE_URL": "postgres://u:hunter2@db/x"}
    op = await run_command(engine, "env", base, env=asked)

    assert _env_lines(op)["GITHUB_TOKEN"] == "s3cr3t"  # the process itself gets the values
    assert _env_lines(op)["DATABASE_URL"] == asked["DATABASE_URL"]
    events = [e async for e in engine.follow_events(op, follow=False)]
    spawn = next(e for e in events if e.type == "spawn")
    assert spawn.data["env"] == {
        "PATH": DEFAULT_PATH,
        "GITHUB_TOKEN": "<MASKED>",
        "DATABASE_URL": "<MASKED>",
    }
    for value in ("s3cr3t", "hunter2"):
        assert all(value not in str(e.data) for e in events if e.type != "stdout")


async def test_cwd_defaults_to_the_image_cwd(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "pwd", base)

    assert stdout(op) == "/\n"
    assert op.result_image == base.uuid


async def test_missing_cwd_is_created_owned_by_the_run_user(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "pwd", base, cwd="/work/deep/dir", uid=1000, gid=1000)

    assert op.status == OperationStatus.SUCCESS, op.error
    assert stdout(op) == "/work/deep/dir\n"
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
    assert stdout(again) == "/tmp\n"


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
    record = await engine.upload_file(chunks(b"tenant B's data"), namespace="other")
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
