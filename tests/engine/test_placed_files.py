"""Runs on the fake runtime: files placed in the sandbox before the command starts,
including through the symlinks of a hostile image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from runkit import chunks

from sandtree.engine import (
    Engine,
    ImageRecord,
    OperationQuery,
    OperationStatus,
    PlacedFile,
    RunSpec,
)
from sandtree.errors import InvalidRequestError
from sandtree.testing import read_file, run_command

pytestmark = pytest.mark.anyio


def _host_path_exists(path: str) -> bool:
    return os.path.lexists(path)


# -- placed files ----------------------------------------------------------------------------


async def test_placed_file_has_its_content_mode_and_owner(
    engine: Engine, base: ImageRecord
) -> None:
    record = await engine.upload_file(chunks(b"secret ", b"key\n"))
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
    record = await engine.upload_file(chunks(b"cfg"))
    placed = PlacedFile(uuid=record.uuid, path="/opt/app/conf/app.ini", uid=1000, gid=1000)

    op = await run_command(engine, "echo", base, files=(placed,))

    assert op.result_image is not None
    child = engine.resolve_image(op.result_image)
    assert read_file(engine, child, "/opt/app/conf/app.ini") == b"cfg"
    assert engine.stat_path(child, "/opt/app").is_dir


async def test_placed_file_is_visible_to_the_command(engine: Engine, base: ImageRecord) -> None:
    record = await engine.upload_file(chunks(b"payload"))
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
    record = await engine.upload_file(chunks(b"dropped"))
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
    record = await engine.upload_file(chunks(b"overwritten?"))
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
    record = await engine.upload_file(chunks(b"x"))
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
    record = await engine.upload_file(chunks(b"climb"))
    placed = PlacedFile(uuid=record.uuid, path="/etc/up/../../escaped.txt")

    op = await run_command(engine, "echo", image, files=(placed,))

    assert op.status == OperationStatus.SUCCESS, op.error
    assert not (tmp_path / "escaped.txt").exists()
    assert not _host_path_exists("/escaped.txt")
    assert op.result_image is not None
    assert read_file(engine, engine.resolve_image(op.result_image), "/escaped.txt") == b"climb"


# -- owners: only ids the sandbox has ---------------------------------------------------------


def _image_content_owned_outside_the_sandbox(engine: Engine) -> list[str]:
    """Entries of layers and run uppers whose host owner is not a shifted sandbox id."""
    shift = engine.settings.uid_shift
    tops = [*engine.layers.layers_dir.iterdir(), *engine.layers.runs_dir.glob("*/upper")]
    found = []
    for top in tops:
        for path in [top, *top.rglob("*")]:
            st = os.lstat(path)
            if not (shift <= st.st_uid <= shift + 65535 and shift <= st.st_gid <= shift + 65535):
                found.append(f"{path} ({st.st_uid}:{st.st_gid})")
    return found


@pytest.mark.parametrize(
    ("uid", "gid", "field"),
    [(-100000, -100000, ".uid"), (0, -100000, ".gid"), (70000, 0, ".uid"), (0, 2**32, ".gid")],
)
async def test_a_placed_file_owned_outside_the_sandbox_ids_is_refused_before_the_run(
    engine: Engine, base: ImageRecord, uid: int, gid: int, field: str
) -> None:
    record = await engine.upload_file(chunks(b"#!/bin/sh\nid\n"))
    # -100000 + the uid shift (100000) is host root: with 04755 a setuid-root file.
    placed = PlacedFile(uuid=record.uuid, path="/bin/rootme", mode=0o4755, uid=uid, gid=gid)

    with pytest.raises(InvalidRequestError) as caught:
        await engine.spawn(RunSpec(image=base.uuid, command="true", files=(placed,)))

    assert f"files['/bin/rootme']{field}" in caught.value.message
    assert "0 to 65535" in caught.value.message
    assert engine.list_operations(OperationQuery()) == []
    assert _image_content_owned_outside_the_sandbox(engine) == []


async def test_a_run_whose_uid_is_outside_the_sandbox_ids_cannot_create_its_cwd_as_host_root(
    engine: Engine, base: ImageRecord
) -> None:
    for uid, gid in ((-100000, 0), (0, -100000), (65536, 0)):
        with pytest.raises(InvalidRequestError, match="0 to 65535"):
            await engine.spawn(
                RunSpec(image=base.uuid, command="true", cwd="/made/here", uid=uid, gid=gid)
            )
    assert engine.list_operations(OperationQuery()) == []
    assert _image_content_owned_outside_the_sandbox(engine) == []


async def test_a_placed_file_with_the_highest_sandbox_ids_is_stored_at_the_top_of_the_range(
    engine: Engine, base: ImageRecord
) -> None:
    record = await engine.upload_file(chunks(b"x"))
    placed = PlacedFile(uuid=record.uuid, path="/top", mode=0o644, uid=65535, gid=65535)

    op = await run_command(engine, "true", base, files=(placed,))

    assert op.status == OperationStatus.SUCCESS, op.error
    assert op.result_image is not None
    with engine.mounted(engine.resolve_image(op.result_image)) as root:
        st = os.lstat(root / "top")
    top = engine.settings.uid_shift + 65535
    assert (st.st_uid, st.st_gid) == (top, top)


async def test_a_process_exec_as_an_id_outside_the_sandbox_is_refused(
    engine: Engine, base: ImageRecord
) -> None:
    op = await run_command(engine, "true", base)

    for uid, gid in ((-100000, 0), (0, 65536)):
        with pytest.raises(InvalidRequestError, match="0 to 65535"):
            await engine.exec_process(op, command="id", uid=uid, gid=gid)
