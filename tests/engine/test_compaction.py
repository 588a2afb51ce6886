"""Compaction: deep images get a short physical stack while their logical lineage stays."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from sandtree.engine import Engine, ImageRecord
from sandtree.engine._compaction import merge_point
from sandtree.errors import PathNotFoundError
from sandtree.testing import make_child, make_engine, read_file

pytestmark = pytest.mark.anyio


_OPAQUE = "trusted.overlay.opaque"


async def _settle(engine: Engine) -> None:
    """Wait for the compactions the engine started in the background."""
    with anyio.fail_after(30):
        while engine._background:
            await asyncio.gather(*engine._background)


def _names(engine: Engine, image: ImageRecord, path: str) -> list[str]:
    return [item.path for item in engine.list_dir(image, path)]


@pytest.fixture
async def shallow(tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine that compacts any image stacked on more than three layers."""
    async with make_engine(tmp_path / "shallow", max_stack_layers=3) as eng:
        yield eng


# -- compaction of one image -----------------------------------------------------------------


async def test_compact_keeps_the_base_and_merges_the_rest_into_one_layer(
    engine: Engine, base: ImageRecord
) -> None:
    a = await make_child(engine, base, "write /srv/a 1; write /srv/edit v1")
    b = await make_child(engine, a, "write /srv/b 2; write /srv/edit v2")
    c = await make_child(engine, b, "write /srv/c 3; rm /srv/a")

    await engine._compact(c)
    compacted = engine.resolve_image(c.uuid)

    assert len(compacted.layers) == 2
    assert compacted.layers[0] == base.layers[0]
    assert compacted.layers[1] not in c.layers
    assert (compacted.parent, compacted.depth, compacted.command) == (b.uuid, 3, c.command)
    assert _names(engine, compacted, "/srv") == ["b", "c", "edit"]
    assert read_file(engine, compacted, "/srv/edit") == b"v2"
    assert read_file(engine, compacted, "/etc/hostname") == b"sandbox\n"
    # The ancestors keep their own stacks.
    assert engine.resolve_image(b.uuid).layers == b.layers
    assert _names(engine, b, "/srv") == ["a", "b", "edit"]


async def test_compact_of_a_two_layer_stack_changes_nothing(
    engine: Engine, base: ImageRecord
) -> None:
    a = await make_child(engine, base, "write /a 1")

    await engine._compact(a)

    assert engine.resolve_image(a.uuid).layers == a.layers


async def test_compaction_keeps_a_base_file_deleted_higher_up_deleted(
    engine: Engine, base: ImageRecord
) -> None:
    a = await make_child(engine, base, "rm /etc/hostname")
    b = await make_child(engine, a, "write /b 1")
    c = await make_child(engine, b, "write /c 1")

    await engine._compact(c)
    compacted = engine.resolve_image(c.uuid)

    with pytest.raises(PathNotFoundError):
        engine.open_file(compacted, "/etc/hostname")
    assert "hostname" not in _names(engine, compacted, "/etc")
    assert "passwd" in _names(engine, compacted, "/etc")


@pytest.mark.parametrize("replaced_at", [0, 1], ids=["bottom-merged-layer", "upper-layer"])
async def test_compaction_of_a_replaced_directory_keeps_only_the_new_content(
    engine: Engine, base: ImageRecord, replaced_at: int
) -> None:
    # /etc comes from the base; rm + recreate makes it an opaque directory in one layer.
    commands = ["write /x x", "write /y y"]
    commands.insert(replaced_at, "rm /etc; write /etc/only fresh")
    commands.append("write /etc/more later")
    image = base
    for command in commands:
        image = await make_child(engine, image, command)
    before = _names(engine, image, "/etc")

    await engine._compact(image)
    compacted = engine.resolve_image(image.uuid)

    assert before == ["more", "only"]
    assert len(compacted.layers) == 2
    assert _names(engine, compacted, "/etc") == ["more", "only"]
    assert read_file(engine, compacted, "/etc/only") == b"fresh"
    with pytest.raises(PathNotFoundError):
        engine.open_file(compacted, "/etc/passwd")
    merged_etc = engine.layers.path(compacted.layers[1]) / "etc"
    assert os.getxattr(merged_etc, _OPAQUE, follow_symlinks=False) == b"y"


async def test_compacted_image_survives_deletion_of_its_ancestors_and_gc(
    engine: Engine, base: ImageRecord
) -> None:
    a = await make_child(engine, base, "write /a from-a")
    b = await make_child(engine, a, "write /b from-b")
    c = await make_child(engine, b, "write /c from-c")
    await engine._compact(c)
    old_layers = set(c.layers[1:])

    engine.delete_image(a)
    engine.delete_image(b)
    removed = await engine.collect_garbage()

    assert set(removed) == old_layers
    for layer in old_layers:
        assert not engine.layers.path(layer).exists()
    compacted = engine.resolve_image(c.uuid)
    assert [read_file(engine, compacted, p) for p in ("/a", "/b", "/c")] == [
        b"from-a",
        b"from-b",
        b"from-c",
    ]
    d = await make_child(engine, compacted, "write /d from-d")
    assert {"a", "b", "bin", "c", "d"} <= set(_names(engine, d, "/"))


async def test_children_made_before_compaction_are_rebased_and_keep_their_view(
    engine: Engine, base: ImageRecord
) -> None:
    a = await make_child(engine, base, "write /a 1")
    b = await make_child(engine, a, "write /b 1")
    c = await make_child(engine, b, "write /c 1")
    d = await make_child(engine, c, "rm /a; write /d 1")

    await engine._compact(c)

    compacted_c = engine.resolve_image(c.uuid).layers
    assert engine.resolve_image(d.uuid).layers == (*compacted_c, d.layers[-1])
    assert {"b", "c", "d"} <= set(_names(engine, d, "/"))
    assert "a" not in _names(engine, d, "/")
    diff = await engine.diff(d)  # parent's stack changed: the diff still compares views
    assert diff.added == ["/d"]
    assert diff.deleted == ["/a"]


async def test_diff_of_a_compacted_image_against_its_parent(
    engine: Engine, base: ImageRecord
) -> None:
    a = await make_child(engine, base, "write /a 1; write /keep k")
    b = await make_child(engine, a, "write /b 1")
    c = await make_child(engine, b, "write /c 1; rm /a")
    await engine._compact(c)

    diff = await engine.diff(engine.resolve_image(c.uuid))

    assert diff.added == ["/c"]
    assert diff.deleted == ["/a"]
    assert diff.changed == []


# -- compaction in the background ------------------------------------------------------------


async def test_run_past_max_stack_layers_compacts_its_image_in_the_background(
    shallow: Engine, rootfs: Path
) -> None:
    image = await shallow.import_local(rootfs)
    made = []
    for i in range(4):
        image = await make_child(shallow, image, f"write /f{i} {i}")
        made.append(image)
    await _settle(shallow)

    assert [len(i.layers) for i in made[:3]] == [2, 3, 4]
    third = shallow.resolve_image(made[2].uuid)
    assert third.layers[0] == made[2].layers[0]
    assert len(third.layers) == 2  # 4 > max_stack_layers=3: compacted
    assert (third.parent, third.depth) == (made[1].uuid, 3)
    final = shallow.resolve_image(image.uuid)
    assert len(final.layers) <= 3
    assert final.depth == 4
    assert {"bin", "etc", "f0", "f1", "f2", "f3"} <= set(_names(shallow, final, "/"))


@pytest.mark.slow
async def test_two_thousand_runs_deep_keep_every_file_and_a_short_stack(
    tmp_path: Path, busybox_rootfs: Path
) -> None:
    async with make_engine(tmp_path / "deep", max_stack_layers=8) as engine:
        root = await engine.import_local(busybox_rootfs, tag="root")
        image = root
        chain = [root]
        alive: dict[str, bytes] = {}
        deleted: list[str] = []
        for i in range(1, 2001):
            name = f"f{i:03d}"
            command = f"write /data/{name} content-{i}"
            alive[name] = f"content-{i}".encode()
            if i % 50 == 0:
                # Delete one file from long ago (long compacted) and one from just before.
                for victim in (f"f{i - 45:03d}", f"f{i - 2:03d}"):
                    command += f"; rm /data/{victim}"
                    del alive[victim]
                    deleted.append(victim)
            image = await make_child(engine, image, command)
            chain.append(image)
        await _settle(engine)

        final = engine.resolve_image(image.uuid)
        assert final.depth == 2000
        assert len(final.layers) <= 9
        # Short everywhere: every compaction past the threshold merges at least two layers.
        assert max(len(engine.resolve_image(i.uuid).layers) for i in chain) <= 9
        # Lineage is logical: it walks back through all 2,000 ancestors.
        lineage = engine.lineage(final, ancestor_limit=None)
        assert [i.depth for i in lineage.ancestors] == list(range(1999, -1, -1))
        assert [i.uuid for i in lineage.ancestors] == [i.uuid for i in reversed(chain[:-1])]
        assert lineage.root.uuid == root.uuid
        short = engine.lineage(final)
        assert len(short.ancestors) == 100
        assert short.root.uuid == root.uuid

        assert _names(engine, final, "/data") == sorted(alive)
        for name, content in alive.items():
            assert read_file(engine, final, f"/data/{name}") == content
        for name in deleted:
            with pytest.raises(PathNotFoundError):
                engine.open_file(final, f"/data/{name}")
        # An image in the middle of the chain shows the state after its own run.
        middle = engine.resolve_image(chain[120].uuid)
        expected_middle = {f"f{i:03d}" for i in range(1, 121)} - {"f005", "f048", "f055", "f098"}
        assert set(_names(engine, middle, "/data")) == expected_middle

        after = await make_child(engine, final, "write /data/after deep; rm /data/f300")
        assert after.depth == 2001
        assert after.parent == final.uuid
        assert read_file(engine, after, "/data/after") == b"deep"
        assert set(_names(engine, after, "/data")) == (set(alive) - {"f300"}) | {"after"}
        diff = await engine.diff(after)
        assert diff.added == ["/data/after"]
        assert diff.deleted == ["/data/f300"]


@pytest.mark.parametrize(
    ("spans", "point"),
    [
        ([1 << 40, 1, 1, 1], 1),  # a fresh chain: everything above the base merges
        ([1 << 40, 24, 1, 1], 2),  # small new layers merge among themselves
        ([1 << 40, 24, 16, 8, 4, 2, 1, 1], 1),  # equal tops carry all the way down
        ([1 << 40, 1], 2),  # one layer above the base: nothing to merge
        ([1 << 40, 8, 4, 2, 1], 3),  # the top two merge even when smaller than below
        ([1 << 40, 1 << 40, 1 << 40], 3),  # imported layers are never merged
        ([1 << 40, 1 << 40, 1], 3),  # ... not even with a run layer on top
    ],
)
def test_merge_point_gathers_layers_no_larger_than_what_is_above_them(
    spans: list[int], point: int
) -> None:
    assert merge_point(spans) == point


def test_a_two_thousand_run_chain_keeps_short_stacks_at_log_cost() -> None:
    # Simulate the policy: one new layer per run, compaction past 24 layers.
    spans, merged = [1 << 40], 0
    longest = 0
    for _ in range(2000):
        spans.append(1)
        longest = max(longest, len(spans))
        if len(spans) > 24:
            k = merge_point(spans)
            merged += sum(spans[k:])
            spans = [*spans[:k], sum(spans[k:])]
    assert longest <= 30
    assert merged < 2000 * 2  # vs ~86,000 layer-runs when every compaction merges it all
