"""The image tree (parent, children, ancestors, root, depth) and diffs between images."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from sandtree.engine import Engine, ImageRecord, RunSpec
from sandtree.engine._lineage import diff_layer
from sandtree.errors import InvalidRequestError
from sandtree.testing import make_child

pytestmark = pytest.mark.anyio


@pytest.fixture
async def tree(engine: Engine, base: ImageRecord) -> dict[str, ImageRecord]:
    """base ─ a ─ b ─ c, and a ─ b2 (a sibling of b)."""
    a = await make_child(engine, base, "write /a 1")
    b = await make_child(engine, a, "write /b 1")
    c = await make_child(engine, b, "write /c 1")
    b2 = await make_child(engine, a, "write /b2 1")
    return {"base": base, "a": a, "b": b, "c": c, "b2": b2}


# -- lineage ---------------------------------------------------------------------------------


async def test_lineage_lists_ancestors_nearest_first_up_to_the_root(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    lineage = engine.lineage(tree["c"])

    assert lineage.image == tree["c"]
    assert lineage.parent == tree["b"]
    assert [i.uuid for i in lineage.ancestors] == [tree[n].uuid for n in ("b", "a", "base")]
    assert lineage.root.uuid == tree["base"].uuid
    assert lineage.depth == 3
    assert lineage.children == []


async def test_lineage_lists_children_oldest_first(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    lineage = engine.lineage(tree["a"])

    assert [i.uuid for i in lineage.children] == [tree["b"].uuid, tree["b2"].uuid]
    assert lineage.depth == 1
    assert lineage.parent is not None
    assert lineage.parent.uuid == tree["base"].uuid


async def test_lineage_of_a_root_image_is_itself(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    lineage = engine.lineage(tree["base"])

    assert lineage.parent is None
    assert lineage.ancestors == []
    assert lineage.root.uuid == tree["base"].uuid
    assert lineage.depth == 0
    assert [i.uuid for i in lineage.children] == [tree["a"].uuid]


async def test_lineage_with_an_ancestor_limit_still_finds_the_root(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    lineage = engine.lineage(tree["c"], ancestor_limit=1)

    assert [i.uuid for i in lineage.ancestors] == [tree["b"].uuid]
    assert lineage.root.uuid == tree["base"].uuid
    assert lineage.depth == 3


async def test_lineage_stops_at_a_deleted_ancestor(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    engine.delete_image(tree["a"])

    lineage = engine.lineage(tree["c"])

    assert [i.uuid for i in lineage.ancestors] == [tree["b"].uuid]
    assert lineage.root.uuid == tree["b"].uuid
    assert lineage.depth == 3  # logical depth is kept
    assert engine.lineage(tree["b2"]).parent is None


async def test_each_child_records_the_command_that_made_it(
    tree: dict[str, ImageRecord],
) -> None:
    assert tree["a"].command == "write /a 1"
    assert tree["b2"].command == "write /b2 1"
    assert tree["b2"].parent == tree["a"].uuid


async def _child_in(
    engine: Engine, parent: ImageRecord, command: str, namespace: str
) -> ImageRecord:
    """A child of ``parent`` made by a run of ``namespace``."""
    op = await engine.spawn(RunSpec(image=parent.uuid, command=command, shell=True),
                            namespace=namespace)  # fmt: skip
    with anyio.fail_after(10):
        done = await engine.wait_operation(op)
    assert done.result_image is not None, done.error
    return engine.resolve_image(done.result_image, namespaces=(namespace,))


@pytest.fixture
async def shared_tree(engine: Engine, rootfs: Path) -> dict[str, ImageRecord]:
    """A public image with a child of team-b and a child of team-c, each tagged by its own."""
    public = await engine.import_local(rootfs, tag="shared:1", namespace="public")
    b = await _child_in(engine, public, "write /b 1", "team-b")
    c = await _child_in(engine, public, "write /c-secret 1", "team-c")
    engine.tag_image(public, "c-name", namespace="team-c")
    engine.tag_image(c, "c-child", namespace="team-c")
    return {"public": public, "b": b, "c": c}


async def test_lineage_seen_from_a_namespace_leaves_out_other_namespaces_children(
    engine: Engine, shared_tree: dict[str, ImageRecord]
) -> None:
    public = shared_tree["public"]

    seen_by_b = engine.lineage(public, namespace="team-b")
    seen_by_c = engine.lineage(public, namespace="team-c")

    assert [i.uuid for i in seen_by_b.children] == [shared_tree["b"].uuid]
    assert [i.uuid for i in seen_by_c.children] == [shared_tree["c"].uuid]
    assert seen_by_c.children[0].tags == ("c-child",)
    assert [i.uuid for i in engine.lineage(public).children] == [
        shared_tree["b"].uuid,
        shared_tree["c"].uuid,
    ]  # the engine's own, unscoped view keeps everything (compaction walks it)


async def test_lineage_seen_from_a_namespace_shows_public_ancestors_with_their_public_tags(
    engine: Engine, shared_tree: dict[str, ImageRecord]
) -> None:
    seen = engine.lineage(shared_tree["b"], namespace="team-b")

    assert [a.uuid for a in seen.ancestors] == [shared_tree["public"].uuid]
    assert seen.root.uuid == shared_tree["public"].uuid
    assert seen.ancestors[0].tags == ("shared:1",)  # not team-c's "c-name"


# -- diff ------------------------------------------------------------------------------------


async def test_diff_against_the_parent_lists_added_changed_and_deleted(
    engine: Engine, base: ImageRecord
) -> None:
    parent = await make_child(
        engine, base, "write /srv/keep k; write /srv/edit old; write /srv/gone g"
    )
    child = await make_child(
        engine, parent, "write /srv/edit brand-new; rm /srv/gone; write /srv/new n"
    )

    diff = await engine.diff(child)

    assert diff.added == ["/srv/new"]
    assert diff.changed == ["/srv/edit"]
    assert diff.deleted == ["/srv/gone"]


async def test_diff_with_the_parent_given_explicitly_is_the_same(
    engine: Engine, base: ImageRecord
) -> None:
    parent = await make_child(engine, base, "write /x 1; write /y 1")
    child = await make_child(engine, parent, "write /x 22; rm /y; write /z 1")

    assert await engine.diff(child, parent) == await engine.diff(child)


async def test_diff_of_a_new_directory_lists_it_and_its_files(
    engine: Engine, base: ImageRecord
) -> None:
    child = await make_child(engine, base, "write /opt/tool/bin/run x; write /opt/tool/README y")

    diff = await engine.diff(child)

    assert diff.added == ["/opt", "/opt/tool", "/opt/tool/README", "/opt/tool/bin",
                          "/opt/tool/bin/run"]  # fmt: skip
    assert diff.changed == []
    assert diff.deleted == []


async def test_diff_between_siblings(engine: Engine, tree: dict[str, ImageRecord]) -> None:
    diff = await engine.diff(tree["b2"], tree["b"])

    assert diff.added == ["/b2"]
    assert diff.deleted == ["/b"]
    assert diff.changed == []


async def test_diff_between_cousins_at_different_depths(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    diff = await engine.diff(tree["c"], tree["b2"])

    assert diff.added == ["/b", "/c"]
    assert diff.deleted == ["/b2"]


async def test_diff_against_an_ancestor_spans_several_layers(
    engine: Engine, tree: dict[str, ImageRecord]
) -> None:
    diff = await engine.diff(tree["c"], tree["base"])

    assert diff.added == ["/a", "/b", "/c"]
    assert diff.deleted == []


async def test_diff_of_a_changed_file_between_siblings(engine: Engine, base: ImageRecord) -> None:
    parent = await make_child(engine, base, "write /etc/app.conf v1")
    left = await make_child(engine, parent, "write /etc/app.conf left-version")
    right = await make_child(engine, parent, "write /etc/app.conf right")

    diff = await engine.diff(left, right)

    assert diff.changed == ["/etc/app.conf"]
    assert diff.added == []
    assert diff.deleted == []


async def test_diff_of_images_with_the_same_layers_is_empty(
    engine: Engine, base: ImageRecord
) -> None:
    same_fs = await make_child(engine, base, "echo hi", env={"A": "1"}, preserve_env=True)

    diff = await engine.diff(same_fs)

    assert (diff.added, diff.changed, diff.deleted) == ([], [], [])


async def test_diff_of_a_root_image_without_other_is_invalid(
    engine: Engine, base: ImageRecord
) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.diff(base)


async def test_diff_reports_files_hidden_by_a_replaced_directory_as_deleted(
    engine: Engine, base: ImageRecord
) -> None:
    parent = await make_child(engine, base, "write /d/old1 a; write /d/old2 b; write /d/same c")
    # rm + recreate makes /d an opaque directory in the child's layer.
    child = await make_child(engine, parent, "rm /d; write /d/new n; write /d/same c")

    diff = await engine.diff(child)

    assert diff.added == ["/d/new"]
    # /d/old1 and /d/old2 are gone from the child's view, so they must show as deleted.
    assert diff.deleted == ["/d/old1", "/d/old2"]


async def test_diff_of_a_file_replaced_by_a_directory(engine: Engine, base: ImageRecord) -> None:
    parent = await make_child(engine, base, "write /thing was-a-file")
    child = await make_child(engine, parent, "rm /thing; write /thing/inside now-a-dir")

    diff = await engine.diff(child)

    assert diff.changed == ["/thing"]
    assert diff.added == ["/thing/inside"]
    assert diff.deleted == []


# -- diffs never look through an image's symlinks at the host ----------------------------------


def _probe_layers(tmp_path: Path) -> tuple[Path, Path]:
    """A parent view where ``/probe`` is a symlink to a host directory, and a layer over it
    that made ``/probe`` a directory holding ``secret`` (a name the host directory has, with
    a file in it) and ``absent`` (a name it lacks); ``secret`` is opaque."""
    host = tmp_path / "host"
    (host / "secret").mkdir(parents=True)
    (host / "secret" / "host-file").write_bytes(b"host\n")
    view = tmp_path / "view"
    view.mkdir()
    (view / "probe").symlink_to(host)
    layer = tmp_path / "layer"
    for name in ("secret", "absent"):
        (layer / "probe" / name).mkdir(parents=True)
        os.chmod(layer / "probe" / name, os.stat(host / "secret").st_mode)
    os.setxattr(layer / "probe", "trusted.overlay.opaque", b"y")
    os.setxattr(layer / "probe" / "secret", "trusted.overlay.opaque", b"y")
    return layer, view


def test_diff_of_a_layer_over_an_image_symlink_reports_its_paths_as_added_not_host_ones(
    tmp_path: Path,
) -> None:
    layer, view = _probe_layers(tmp_path)

    diff = diff_layer(layer, view)

    # Whether the host has /secret must not show (it made "secret" changed, not added), and
    # the host directory's files must not be listed as deleted.
    assert diff.added == ["/probe/absent", "/probe/secret"]
    assert diff.changed == ["/probe"]
    assert diff.deleted == []
