"""Restarts: state on disk survives, and what a crash left behind is cleaned up at start."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from sandtree.engine import (
    Engine,
    ImageQuery,
    OperationEvent,
    OperationKind,
    OperationRecord,
    OperationStatus,
    RunSpec,
)
from sandtree.engine._clock import now_iso
from sandtree.engine.layers._overlay import mount_overlay
from sandtree.testing import make_engine

pytestmark = pytest.mark.anyio


def _disk_engine(data_dir: Path) -> Engine:
    return make_engine(data_dir, in_memory=False)


def _stored_op(status: OperationStatus, image: str | None = None) -> OperationRecord:
    return OperationRecord(
        uuid=str(uuid.uuid4()),
        kind=OperationKind.INSTANCE,
        status=status,
        created_at=now_iso(),
        started_at=now_iso() if status != OperationStatus.PENDING else None,
        image=image,
    )


async def _events(engine: Engine, op: OperationRecord) -> list[OperationEvent]:
    return [e async for e in engine.follow_events(op, follow=False)]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _is_mount(path: Path) -> bool:
    return os.path.ismount(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- operations ------------------------------------------------------------------------------


async def test_operation_left_executing_is_failed_at_the_next_start(
    data_dir: Path, rootfs: Path
) -> None:
    async with _disk_engine(data_dir) as engine:
        image = await engine.import_local(rootfs, tag="base")
        op = _stored_op(OperationStatus.EXECUTING, image.uuid)
        engine.store.add_operation(op)
        engine.store.append_events(
            op.uuid,
            [
                OperationEvent(id=1, ts=now_iso(), type="init", data={}, spid=0),
                OperationEvent(id=2, ts=now_iso(), type="spawn", data={"pid": 7}, spid=1),
            ],
        )

    async with _disk_engine(data_dir) as engine:
        record = engine.get_operation(op.uuid)
        events = await _events(engine, op)

    assert record.status == OperationStatus.FAILED
    assert record.error is not None
    assert "restarted" in record.error
    assert record.finished_at is not None
    assert [e.type for e in events] == ["init", "spawn", "completion"]
    completion = events[-1]
    assert completion.id == 3
    assert completion.spid is None
    assert completion.data["status"] == "FAILED"
    assert completion.data["error"] == record.error


@pytest.mark.parametrize("status", [OperationStatus.ASSIGNED, OperationStatus.PENDING])
async def test_operation_that_never_finished_is_failed_with_a_completion_event(
    data_dir: Path, status: OperationStatus
) -> None:
    async with _disk_engine(data_dir) as engine:
        op = _stored_op(status)
        engine.store.add_operation(op)

    async with _disk_engine(data_dir) as engine:
        record = engine.get_operation(op.uuid)
        events = await _events(engine, op)
        with anyio.fail_after(5):
            waited = await engine.wait_operation(op, timeout=5)

    assert record.status == OperationStatus.FAILED
    assert record.error is not None
    assert "restart" in record.error
    assert [(e.id, e.type) for e in events] == [(1, "completion")]
    assert waited.status == OperationStatus.FAILED


async def test_finished_operations_are_left_alone_by_recovery(data_dir: Path, rootfs: Path) -> None:
    async with _disk_engine(data_dir) as engine:
        await engine.import_local(rootfs, tag="base")
        op = await engine.spawn(RunSpec(image="tag:base", command="write /x 1", shell=True))
        with anyio.fail_after(10):
            done = await engine.wait_operation(op)
        events_before = await _events(engine, op)

    async with _disk_engine(data_dir) as engine:
        assert engine.get_operation(op.uuid) == done
        assert await _events(engine, op) == events_before
        assert done.result_image is not None
        child = engine.resolve_image(done.result_image)
        with engine.open_file(child, "/x") as f:
            assert f.read() == b"1"


async def test_close_during_a_run_records_it_as_failed_by_the_shutdown(
    data_dir: Path, rootfs: Path
) -> None:
    engine = _disk_engine(data_dir)
    await engine.start()
    try:
        await engine.import_local(rootfs, tag="base")
        op = await engine.spawn(RunSpec(image="tag:base", command="block", shell=True))
        with anyio.fail_after(10):
            async for event in engine.follow_events(op):
                if event.type == "spawn":
                    break
    finally:
        with anyio.fail_after(20):
            await engine.close()

    async with _disk_engine(data_dir) as engine:
        record = engine.get_operation(op.uuid)
        events = await _events(engine, op)

    # Nobody cancelled it: the server stopped it, and says so (the queue has a message for it).
    assert record.status == OperationStatus.FAILED
    assert record.error is not None
    assert "shut down" in record.error
    assert record.result_image is None
    assert events[-1].type == "completion"
    assert [e.type for e in events].count("completion") == 1


# -- state that survives ---------------------------------------------------------------------


async def test_images_tags_and_files_survive_a_restart(data_dir: Path, rootfs: Path) -> None:
    async with _disk_engine(data_dir) as engine:
        base = await engine.import_local(rootfs, tag="base")
        op = await engine.spawn(RunSpec(image="tag:base", command="write /kept yes", shell=True))
        with anyio.fail_after(10):
            done = await engine.wait_operation(op)
        assert done.result_image is not None
        engine.tag_image(engine.resolve_image(done.result_image), "child")
        record = await engine.upload_file(_chunks(b"uploaded"))

    async with _disk_engine(data_dir) as engine:
        assert engine.resolve_image("tag:base").uuid == base.uuid
        child = engine.resolve_image("tag:child")
        assert child.parent == base.uuid
        with engine.open_file(child, "/kept") as f:
            assert f.read() == b"yes"
        assert engine.get_file(record.sha256) == record
        op2 = await engine.spawn(RunSpec(image="tag:child", command="write /more 1", shell=True))
        with anyio.fail_after(10):
            again = await engine.wait_operation(op2)
        assert again.status == OperationStatus.SUCCESS


# -- what a crash leaves on disk -------------------------------------------------------------


async def test_leftover_runs_mounts_and_staging_dirs_are_swept_at_start(
    data_dir: Path, rootfs: Path
) -> None:
    async with _disk_engine(data_dir) as engine:
        image = await engine.import_local(rootfs, tag="base")
        # A run that was mid-flight when the process died: mounted, with writes in its upper.
        dirs = engine.layers.prepare_run("crashed-run", image.layers)
        (dirs.merged / "tmp" / "half-written").write_text("x", encoding="utf-8")
        staging = engine.layers.new_staging_dir()
        (staging / "partial-layer-file").write_text("x", encoding="utf-8")
        mounts_dir = engine.layers.mounts_dir
        runs_dir, tmp_dir = engine.layers.runs_dir, engine.layers.tmp_dir
        assert _is_mount(dirs.merged)
        extra_lower = data_dir.parent / "extra-lower"
        extra_lower.mkdir()
        layer_paths = [engine.layers.path(image.layers[0]), extra_lower]
        stale_view = engine.layers.views_dir / "stale-view"
    # An inspection view the dead process never unmounted.
    stale_view.mkdir(parents=True)  # a clean close removed views/; a crash would not
    mount_overlay(layer_paths, stale_view)

    async with _disk_engine(data_dir) as engine:
        assert not _is_mount(dirs.merged)
        assert not dirs.merged.exists()
        assert not _is_mount(stale_view)
        assert not stale_view.exists()
        assert list(runs_dir.iterdir()) == []
        assert list(tmp_dir.iterdir()) == []
        assert [p.name for p in mounts_dir.iterdir()] == ["views"]
        assert len(engine.list_images(ImageQuery())) == 1
        assert engine.layers.path(image.layers[0]).is_dir()


async def test_layer_dir_unknown_to_the_metadata_is_removed_at_start(
    data_dir: Path, rootfs: Path
) -> None:
    async with _disk_engine(data_dir) as engine:
        image = await engine.import_local(rootfs, tag="base")
        op = await engine.spawn(RunSpec(image="tag:base", command="write /x 1", shell=True))
        with anyio.fail_after(10):
            done = await engine.wait_operation(op)
        assert done.result_image is not None
        child = engine.resolve_image(done.result_image)
        # A layer adopted by a commit whose metadata transaction never happened.
        orphan = engine.layers.path("0" * 32)
        (orphan / "etc").mkdir(parents=True)
        (orphan / "etc" / "orphaned").write_text("x", encoding="utf-8")

    async with _disk_engine(data_dir) as engine:
        assert not orphan.exists()
        for layer in child.layers:
            assert engine.layers.path(layer).is_dir()
        assert sorted(p.name for p in engine.layers.layers_dir.iterdir()) == sorted(child.layers)
        assert child.layers[0] == image.layers[0]
        with engine.open_file(engine.resolve_image(child.uuid), "/x") as f:
            assert f.read() == b"1"


async def test_layer_of_a_compacted_image_survives_a_restart(data_dir: Path, rootfs: Path) -> None:
    async with _disk_engine(data_dir) as engine:
        image = await engine.import_local(rootfs, tag="base")
        for i in range(3):
            op = await engine.spawn(
                RunSpec(image=image.uuid, command=f"write /f{i} {i}", shell=True)
            )
            with anyio.fail_after(10):
                done = await engine.wait_operation(op)
            assert done.result_image is not None
            image = engine.resolve_image(done.result_image)
        await engine._compact(image)
        compacted = engine.resolve_image(image.uuid)
        assert len(compacted.layers) == 2

    async with _disk_engine(data_dir) as engine:
        assert engine.layers.path(compacted.layers[1]).is_dir()
        again = engine.resolve_image(image.uuid)
        assert again.layers == compacted.layers
        names = {item.path for item in engine.list_dir(again, "/")}
        assert {"f0", "f1", "f2"} <= names


async def test_a_start_on_an_old_world_readable_data_dir_makes_it_the_servers_alone(
    tmp_path: Path, rootfs: Path
) -> None:
    data = tmp_path / "data"
    async with _disk_engine(data) as engine:
        await engine.import_local(rootfs, tag="base")
        await engine.upload_file(_one_chunk(b"secret"))
    # As an older sandtree left it: the umask's modes everywhere.
    for path in [data, *data.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)
        elif path.is_file() and path.suffix in (".db", ".db-wal", ".db-shm"):
            os.chmod(path, 0o644)

    async with _disk_engine(data):
        pass

    def mode(rel: str) -> int:
        return os.stat(data / rel).st_mode & 0o777

    assert mode(".") == 0o700
    assert {rel: mode(rel) for rel in ("store", "store/layers", "store/runs", "files")} == {
        "store": 0o700, "store/layers": 0o700, "store/runs": 0o700, "files": 0o700,
    }  # fmt: skip
    assert mode("sandtree.db") == 0o600


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data
