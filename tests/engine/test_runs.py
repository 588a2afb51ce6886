"""Runs on the fake runtime: the images they make, and their output streams.

What a run is given is in ``test_run_spec.py``, how it ends in ``test_run_exits.py``, the
files placed in it in ``test_placed_files.py``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from runkit import stdout

from sandtree.engine import Engine, ImageQuery, ImageRecord, OperationStatus
from sandtree.engine.runtime import FakeRuntime
from sandtree.engine.runtime._base import SandboxSpec
from sandtree.engine.runtime._fake import FakeSandbox
from sandtree.errors import PathNotFoundError
from sandtree.testing import make_engine, read_file, run_command

pytestmark = pytest.mark.anyio


def _image_count(engine: Engine) -> int:
    return len(engine.list_images(ImageQuery(limit=1000)))


# -- images made by runs ---------------------------------------------------------------------


async def test_disposable_run_makes_no_image(engine: Engine, base: ImageRecord) -> None:
    before = _image_count(engine)

    op = await run_command(engine, "write /tmp/x data; echo done", base, disposable=True)

    assert op.status == OperationStatus.SUCCESS
    assert op.result_image is None
    assert op.result is not None
    assert op.result["result_image"] is None
    assert stdout(op) == "done\n"
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

    assert stdout(op) == "line one\nline two\n"


async def test_binary_output_is_base64_encoded(engine: Engine, base: ImageRecord) -> None:
    op = await run_command(engine, "cat", base, stdin=b"\x00\xff\x01")

    assert op.result is not None
    assert op.result["stdout"] == {"value": "AP8B", "encoding": "base64", "truncated": False}
