"""Directory states: saved once, made into a layer on first use, mounted by every run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandtree.engine import Engine, ImageRecord, OperationStatus, PlacedFile
from sandtree.errors import FileNotFoundInStoreError, InvalidRequestError
from sandtree.testing import read_file, run_command

pytestmark = pytest.mark.anyio


async def _state(engine: Engine, files: dict[str, bytes]) -> int:
    placed = []
    for path, data in files.items():
        record = await engine.upload_file(_chunks(data))
        placed.append(PlacedFile(uuid=record.uuid, path=path, mode=0o640))
    return engine.create_directory_state(placed).id


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_state_only_takes_files_uploaded_to_its_namespace(engine: Engine) -> None:
    mine = await engine.upload_file(_chunks(b"mine"))
    theirs = await engine.upload_file(_chunks(b"theirs"), namespace="other")
    ok = PlacedFile(uuid=mine.uuid, path="/mine", mode=0o644)

    for stranger in (theirs.uuid, "00000000-0000-4000-8000-000000000000"):
        with pytest.raises(FileNotFoundInStoreError, match=stranger):
            engine.create_directory_state([ok, PlacedFile(uuid=stranger, path="/x", mode=0o644)])

    copy = PlacedFile(uuid=mine.uuid, path="/copy", mode=0o644)
    assert [f.path for f in engine.create_directory_state([ok, copy]).files] == ["/mine", "/copy"]


async def test_a_state_becomes_one_layer_that_every_run_mounts(
    engine: Engine, base: ImageRecord
) -> None:
    state = await _state(engine, {"/app/a.py": b"a", "/app/pkg/b.py": b"b"})
    assert engine.store.directory_state_layer(state) is None

    first = await run_command(engine, "echo ok", base, directory_state=state, disposable=False)
    layer = engine.store.directory_state_layer(state)
    second = await run_command(engine, "echo ok", base, directory_state=state, disposable=False)

    assert layer is not None
    assert engine.store.directory_state_layer(state) == layer  # made once
    child = engine.resolve_image(str(first.result_image))
    assert child.layers == (*base.layers, layer)
    assert read_file(engine, child, "/app/pkg/b.py") == b"b"
    assert engine.stat_path(child, "/app/a.py").mode & 0o777 == 0o640
    assert engine.resolve_image(str(second.result_image)).layers == child.layers


async def test_a_run_that_also_writes_keeps_the_state_layer_under_its_own(
    engine: Engine, base: ImageRecord
) -> None:
    state = await _state(engine, {"/app/a.py": b"a"})
    done = await run_command(
        engine, "write /app/out made", base, directory_state=state, disposable=False
    )
    child = engine.resolve_image(str(done.result_image))
    layer = engine.store.directory_state_layer(state)
    assert child.layers[:-1] == (*base.layers, layer)
    assert read_file(engine, child, "/app/out") == b"made"
    assert read_file(engine, child, "/app/a.py") == b"a"


async def test_garbage_collection_keeps_a_state_layer_no_image_uses(
    engine: Engine, base: ImageRecord
) -> None:
    state = await _state(engine, {"/f": b"x"})
    done = await run_command(engine, "echo", base, directory_state=state, disposable=True)
    layer = engine.store.directory_state_layer(state)
    assert done.result_image is None
    assert layer is not None

    removed = await engine.collect_garbage()

    assert layer not in removed
    assert engine.layers.path(layer).is_dir()


async def test_a_lost_state_layer_is_made_again(engine: Engine, base: ImageRecord) -> None:
    state = await _state(engine, {"/f": b"x"})
    await run_command(engine, "echo", base, directory_state=state)
    first = engine.store.directory_state_layer(state)
    assert first is not None
    engine.layers.delete(first)

    done = await run_command(engine, "echo", base, directory_state=state, disposable=False)

    assert read_file(engine, engine.resolve_image(str(done.result_image)), "/f") == b"x"
    assert engine.store.directory_state_layer(state) != first


async def test_a_new_state_links_the_files_it_shares_with_the_previous_state_layer(
    engine: Engine, base: ImageRecord
) -> None:
    first = await _state(engine, {"/app/a.py": b"a", "/app/b.py": b"b"})
    await run_command(engine, "echo", base, directory_state=first)
    old = engine.layers.path(str(engine.store.directory_state_layer(first)))
    unchanged = engine.get_directory_state(first).files
    edited = await engine.upload_file(_chunks(b"b2"))
    second = engine.create_directory_state(
        [f for f in unchanged if f.path == "/app/a.py"]
        + [PlacedFile(uuid=edited.uuid, path="/app/b.py", mode=0o640)]
    ).id

    done = await run_command(engine, "echo", base, directory_state=second, disposable=False)

    new = engine.layers.path(str(engine.store.directory_state_layer(second)))
    assert (new / "app/a.py").stat().st_ino == (old / "app/a.py").stat().st_ino
    assert (new / "app/b.py").stat().st_ino != (old / "app/b.py").stat().st_ino
    child = engine.resolve_image(str(done.result_image))
    assert read_file(engine, child, "/app/b.py") == b"b2"
    assert read_file(engine, child, "/app/a.py") == b"a"


async def test_a_state_used_again_on_an_image_that_holds_it_places_its_files_again(
    engine: Engine, base: ImageRecord
) -> None:
    state = await _state(engine, {"/app/a.py": b"a"})
    kept = await run_command(engine, "echo", base, directory_state=state, disposable=False)
    child = engine.resolve_image(str(kept.result_image))
    # Same state on top again: nothing to add (the layer is the image's top already).
    again = await run_command(engine, "echo", child, directory_state=state, disposable=False)
    assert again.result_image == child.uuid
    edited = await run_command(
        engine, "write /app/a.py changed", child, directory_state=state, disposable=False
    )
    grandchild = engine.resolve_image(str(edited.result_image))
    # Deeper in the stack now: its files are placed again, over the change.
    restored = await run_command(
        engine, "echo", grandchild, directory_state=state, disposable=False
    )
    assert restored.status == "SUCCESS", restored.error
    assert read_file(engine, engine.resolve_image(str(restored.result_image)), "/app/a.py") == b"a"


async def test_a_state_whose_file_is_owned_outside_the_sandbox_ids_is_refused(
    engine: Engine,
) -> None:
    record = await engine.upload_file(_chunks(b"#!"))
    for uid, gid in ((-100000, 0), (0, -100000), (70000, 0), (0, 2**32)):
        placed = PlacedFile(uuid=record.uuid, path="/bin/x", mode=0o4755, uid=uid, gid=gid)
        with pytest.raises(InvalidRequestError, match=r"files\['/bin/x'\]\.[ug]id .*0 to 65535"):
            engine.create_directory_state([placed])


async def test_a_state_saved_with_a_host_root_owner_fails_the_run_and_writes_no_layer(
    engine: Engine, base: ImageRecord
) -> None:
    # As a state saved by a version that did not check owners: straight into the store.
    record = await engine.upload_file(_chunks(b"#!"))
    bad = PlacedFile(uuid=record.uuid, path="/bin/rootme", mode=0o4755, uid=-100000, gid=0)
    state = engine.store.add_directory_state("default", [bad], "2026-01-01T00:00:00+00:00")
    layers_before = set(engine.layers.layers_dir.iterdir())

    op = await run_command(engine, "true", base, directory_state=state, disposable=False)

    assert op.status == OperationStatus.FAILED
    assert op.error is not None
    assert "files['/bin/rootme'].uid" in op.error
    assert engine.store.directory_state_layer(state) is None
    assert set(engine.layers.layers_dir.iterdir()) == layers_before
    assert list(engine.layers.tmp_dir.iterdir()) == []
