"""Images: resolving, tags, listing, deletion and garbage collection of their layers."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandtree.engine import Engine, ImageQuery, ImageRecord
from sandtree.errors import ForbiddenError, ImageNotFoundError, InvalidRequestError
from sandtree.testing import make_child

pytestmark = pytest.mark.anyio


def _uuids(engine: Engine, **query: object) -> list[str]:
    return [i.uuid for i in engine.list_images(ImageQuery(**query))]  # type: ignore[arg-type]


# -- import and resolve ----------------------------------------------------------------------


async def test_imported_rootfs_is_a_root_image_with_one_layer(
    engine: Engine, base: ImageRecord
) -> None:
    assert base.parent is None
    assert base.depth == 0
    assert len(base.layers) == 1
    assert base.tags == ("base",)
    assert base.size > 0
    assert engine.layers.path(base.layers[0]).is_dir()
    assert {i.path for i in engine.list_dir(base, "/")} >= {"bin", "etc", "tmp", "root"}


async def test_resolve_by_tag_and_by_uuid_give_the_same_image(
    engine: Engine, base: ImageRecord
) -> None:
    assert engine.resolve_image("tag:base") == base
    assert engine.resolve_image(base.uuid) == base
    assert engine.resolve_image(base.uuid.upper()) == base
    assert engine.resolve_image(base.uuid.replace("-", "")) == base


async def test_resolve_of_unknown_or_malformed_references(
    engine: Engine, base: ImageRecord
) -> None:
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:missing")
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("00000000-0000-4000-8000-000000000000")
    with pytest.raises(InvalidRequestError):
        engine.resolve_image("base")


async def test_uuid_with_trailing_newline_is_refused_as_a_request_error(
    engine: Engine, base: ImageRecord
) -> None:
    # Not a bare ValueError from uuid.UUID, which the API would turn into a 500.
    with pytest.raises((InvalidRequestError, ImageNotFoundError)):
        engine.resolve_image(base.uuid + "\n")


async def test_image_of_another_namespace_is_invisible_unless_public(
    engine: Engine, rootfs: Path
) -> None:
    theirs = await engine.import_local(rootfs, tag="shared", namespace="team-b")

    with pytest.raises(ImageNotFoundError):
        engine.resolve_image(theirs.uuid)
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:shared")
    assert engine.resolve_image(theirs.uuid, namespaces=("team-b",)) == theirs
    assert theirs.uuid not in _uuids(engine)


async def test_import_with_an_invalid_tag_is_refused(engine: Engine, rootfs: Path) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.import_local(rootfs, tag="not a tag")
    assert engine.list_images(ImageQuery()) == []


async def test_import_of_a_missing_path_is_refused(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.import_local(tmp_path / "nope")


def _tar_with(path: Path, *entries: tuple[str, bytes, int, int]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, owner in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, owner, owner
            tar.addfile(info, io.BytesIO(data))
    return path


async def test_a_local_tar_whose_setuid_entry_has_uid_4000000_imports_it_as_nobody(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = _tar_with(
        tmp_path / "alien.tar",
        ("bin/su", b"#!/bin/sh\n", 0o4755, 4_000_000),
        ("bin/ok", b"#!/bin/sh\n", 0o4755, 0),
    )

    image = await engine.import_local(archive, tag="alien")

    shift = engine.settings.uid_shift
    with engine.mounted(image) as root:
        alien, ok = os.lstat(root / "bin" / "su"), os.lstat(root / "bin" / "ok")
    assert (alien.st_uid, alien.st_gid) == (shift + 65534, shift + 65534)
    assert alien.st_mode & 0o7777 == 0o755  # no setuid for nobody
    assert (ok.st_uid, ok.st_mode & 0o7777) == (shift, 0o4755)  # image root's setuid stays
    item = engine.stat_path(image, "/bin/su")
    assert (item.uid, item.gid) == (65534, 65534)
    assert any("outside 0..65535" in r.getMessage() for r in caplog.records)


# -- tags ------------------------------------------------------------------------------------


async def test_tag_moves_to_the_image_it_is_set_on(engine: Engine, base: ImageRecord) -> None:
    child = await make_child(engine, base, "write /v 2")

    engine.tag_image(base, "app:v1")
    assert engine.resolve_image("tag:app:v1").uuid == base.uuid
    retagged = engine.tag_image(child, "app:v1")

    assert retagged.tags == ("app:v1",)
    assert engine.resolve_image("tag:app:v1").uuid == child.uuid
    assert engine.resolve_image(base.uuid).tags == ("base",)


async def test_an_image_can_have_several_tags(engine: Engine, base: ImageRecord) -> None:
    engine.tag_image(base, "team/app:v2")
    tagged = engine.tag_image(base, "latest")

    assert tagged.tags == ("base", "latest", "team/app:v2")
    for tag in tagged.tags:
        assert engine.resolve_image(f"tag:{tag}").uuid == base.uuid


async def test_untag_one_tag_keeps_the_others(engine: Engine, base: ImageRecord) -> None:
    engine.tag_image(base, "one")
    engine.tag_image(base, "two")

    left = engine.untag_image(engine.resolve_image(base.uuid), "one")

    assert left.tags == ("base", "two")
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:one")
    assert engine.resolve_image("tag:two").uuid == base.uuid


async def test_untag_without_a_tag_removes_all_of_them(engine: Engine, base: ImageRecord) -> None:
    engine.tag_image(base, "one")
    engine.tag_image(base, "two")

    left = engine.untag_image(engine.resolve_image(base.uuid))

    assert left.tags == ()
    for tag in ("base", "one", "two"):
        with pytest.raises(ImageNotFoundError):
            engine.resolve_image(f"tag:{tag}")
    assert engine.resolve_image(base.uuid).uuid == base.uuid  # the image itself stays


async def test_untag_of_a_tag_the_image_does_not_have_is_invalid(
    engine: Engine, base: ImageRecord
) -> None:
    with pytest.raises(InvalidRequestError, match="not tagged"):
        engine.untag_image(base, "other")
    assert engine.resolve_image("tag:base").uuid == base.uuid


async def test_untag_through_a_stale_record_does_not_remove_the_moved_tag(
    engine: Engine, base: ImageRecord
) -> None:
    child = await make_child(engine, base, "write /x 1")
    stale = engine.resolve_image(base.uuid)  # still says it has "base"
    engine.tag_image(child, "base")  # the tag moves to the child

    with pytest.raises(InvalidRequestError):
        engine.untag_image(stale, "base")
    assert engine.resolve_image("tag:base").uuid == child.uuid


async def test_tag_of_a_deleted_image_is_image_not_found(engine: Engine, base: ImageRecord) -> None:
    child = await make_child(engine, base, "write /x 1")
    engine.delete_image(child)

    # A clear not-found error, not a database integrity error.
    with pytest.raises(ImageNotFoundError):
        engine.tag_image(child, "ghost")
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:ghost")


@pytest.mark.parametrize(
    "tag",
    ["", "has space", "-leading-dash", "trailing:", "a//b", "../up", "x:", "ütf", "tag\n", "a:b:"],
)
async def test_invalid_tag_text_is_refused(engine: Engine, base: ImageRecord, tag: str) -> None:
    with pytest.raises(InvalidRequestError):
        engine.tag_image(base, tag)
    assert engine.resolve_image(base.uuid).tags == ("base",)


@pytest.mark.parametrize("tag", ["a", "python:3.11", "team/app:v2", "A_b-c.d", "x/y/z:1.2.3"])
async def test_valid_tag_text_is_accepted(engine: Engine, base: ImageRecord, tag: str) -> None:
    engine.tag_image(base, tag)

    assert engine.resolve_image(f"tag:{tag}").uuid == base.uuid


# -- listing ---------------------------------------------------------------------------------


@pytest.fixture
async def family(engine: Engine, base: ImageRecord) -> list[ImageRecord]:
    """base (tagged) and three children made one after another: a (tagged), b, c."""
    a = await make_child(engine, base, "write /a 1")
    b = await make_child(engine, a, "write /b 1")
    c = await make_child(engine, b, "write /c 1")
    a = engine.tag_image(a, "team/a:v1")
    return [base, a, b, c]


async def test_list_images_is_newest_first(engine: Engine, family: list[ImageRecord]) -> None:
    assert _uuids(engine) == [i.uuid for i in reversed(family)]


async def test_listed_images_carry_their_own_layers_and_tags(
    engine: Engine, family: list[ImageRecord]
) -> None:
    base, a, b, c = family
    c = engine.tag_image(engine.tag_image(c, "z"), "m")

    listed = engine.list_images(ImageQuery())

    assert listed == [c, b, a, base]
    assert c.tags == ("m", "z")
    assert [len(i.layers) for i in listed] == [4, 3, 2, 1]
    assert engine.store.children(a.uuid) == [b]


async def test_list_images_filters_tagged_and_untagged(
    engine: Engine, family: list[ImageRecord]
) -> None:
    base, a, b, c = family

    assert set(_uuids(engine, tagged=True)) == {base.uuid, a.uuid}
    assert set(_uuids(engine, tagged=False)) == {b.uuid, c.uuid}


async def test_list_images_filters_by_tag_prefix(engine: Engine, family: list[ImageRecord]) -> None:
    base, a, _, _ = family
    engine.tag_image(base, "team_x")

    assert _uuids(engine, tag_prefix="team/") == [a.uuid]
    assert _uuids(engine, tag_prefix="ba") == [base.uuid]
    assert _uuids(engine, tag_prefix="team_") == [base.uuid]  # "_" is not a wildcard
    assert _uuids(engine, tag_prefix="%") == []
    assert _uuids(engine, tag_prefix="zzz") == []


async def test_list_images_tag_prefix_is_case_sensitive_like_tags(
    engine: Engine, family: list[ImageRecord]
) -> None:
    base, _, b, _ = family
    engine.tag_image(b, "Base-upper")

    # Tags resolve case-sensitively, so a prefix filter must not mix cases either.
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:BASE")
    assert _uuids(engine, tag_prefix="base") == [base.uuid]
    assert _uuids(engine, tag_prefix="Base") == [b.uuid]


async def test_list_images_filters_by_creation_time(
    engine: Engine, family: list[ImageRecord]
) -> None:
    base, a, b, c = family

    assert _uuids(engine, since=a.created_at) == [c.uuid, b.uuid, a.uuid]
    assert _uuids(engine, until=a.created_at) == [a.uuid, base.uuid]
    assert _uuids(engine, since=a.created_at, until=b.created_at) == [b.uuid, a.uuid]


async def test_list_images_pages_with_limit_and_offset(
    engine: Engine, family: list[ImageRecord]
) -> None:
    newest_first = [i.uuid for i in reversed(family)]

    assert _uuids(engine, limit=2) == newest_first[:2]
    assert _uuids(engine, limit=2, offset=2) == newest_first[2:]
    assert _uuids(engine, limit=2, offset=4) == []
    assert _uuids(engine, limit=1, offset=1, tagged=False) == [family[2].uuid]


async def test_list_images_by_uuid(engine: Engine, family: list[ImageRecord]) -> None:
    assert _uuids(engine, uuid=family[2].uuid) == [family[2].uuid]


# -- deletion and garbage collection ---------------------------------------------------------


async def test_deleted_image_is_gone_with_its_tags(engine: Engine, base: ImageRecord) -> None:
    child = await make_child(engine, base, "write /x 1")
    child = engine.tag_image(child, "doomed")

    engine.delete_image(child)

    with pytest.raises(ImageNotFoundError):
        engine.resolve_image(child.uuid)
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:doomed")
    assert child.uuid not in _uuids(engine)


async def test_delete_of_an_unknown_image_is_not_found(engine: Engine, base: ImageRecord) -> None:
    engine.delete_image(base)

    with pytest.raises(ImageNotFoundError):
        engine.delete_image(base)


async def test_collect_garbage_removes_only_layers_no_image_uses(
    engine: Engine, base: ImageRecord
) -> None:
    middle = await make_child(engine, base, "write /m middle")
    leaf = await make_child(engine, middle, "write /l leaf")
    sibling = await make_child(engine, base, "write /s sibling")
    middle_layer, leaf_layer, sibling_layer = middle.layers[-1], leaf.layers[-1], sibling.layers[-1]

    engine.delete_image(middle)
    removed = await engine.collect_garbage()

    # The leaf still stacks on the middle image's layer: nothing may go yet.
    assert removed == []
    assert engine.layers.path(middle_layer).is_dir()
    with engine.open_file(leaf, "/m") as f:
        assert f.read() == b"middle"

    engine.delete_image(leaf)
    removed = await engine.collect_garbage()

    assert sorted(removed) == sorted([middle_layer, leaf_layer])
    assert not engine.layers.path(middle_layer).exists()
    assert not engine.layers.path(leaf_layer).exists()
    assert engine.layers.path(base.layers[0]).is_dir()
    assert engine.layers.path(sibling_layer).is_dir()
    with engine.open_file(sibling, "/s") as f:
        assert f.read() == b"sibling"
    assert await engine.collect_garbage() == []


async def test_deleting_a_parent_keeps_the_child_usable(engine: Engine, base: ImageRecord) -> None:
    parent = await make_child(engine, base, "write /p parent")
    child = await make_child(engine, parent, "write /c child")

    engine.delete_image(parent)
    await engine.collect_garbage()

    assert engine.resolve_image(child.uuid).parent == parent.uuid
    grandchild = await make_child(engine, child, "write /g grand")
    assert {i.path for i in engine.list_dir(grandchild, "/")} >= {"p", "c", "g"}


async def test_collect_garbage_after_deleting_a_root_image_removes_its_layer(
    engine: Engine, rootfs: Path
) -> None:
    image = await engine.import_local(rootfs)
    layer = image.layers[0]

    engine.delete_image(image)
    removed = await engine.collect_garbage()

    assert removed == [layer]
    assert not engine.layers.path(layer).exists()


# -- tags belong to a namespace --------------------------------------------------------------


@pytest.fixture
async def shared(engine: Engine, rootfs: Path) -> ImageRecord:
    """A public image tagged ``shared:1`` by the public namespace, ``b-name`` by team-b and
    ``c-name`` by team-c."""
    public = await engine.import_local(rootfs, tag="shared:1", namespace="public")
    engine.tag_image(public, "b-name", namespace="team-b")
    engine.tag_image(public, "c-name", namespace="team-c")
    return public


async def test_a_namespace_sees_its_own_tags_of_a_public_image_then_the_public_ones(
    engine: Engine, shared: ImageRecord
) -> None:
    seen_by_b = engine.resolve_image(shared.uuid, namespaces=("team-b",))
    listed_by_c = engine.list_images(ImageQuery(namespaces=("team-c",)))

    assert seen_by_b.tags == ("b-name", "shared:1")
    assert [i.tags for i in listed_by_c] == [("c-name", "shared:1")]


async def test_tagging_answers_with_the_tags_the_tagger_sees(
    engine: Engine, shared: ImageRecord
) -> None:
    tagged = engine.tag_image(shared, "b-two", namespace="team-b")

    assert tagged.tags == ("b-name", "b-two", "shared:1")


async def test_another_namespaces_tag_neither_matches_a_prefix_nor_makes_an_image_tagged(
    engine: Engine, rootfs: Path
) -> None:
    public = await engine.import_local(rootfs, namespace="public")
    engine.tag_image(public, "c-secret", namespace="team-c")

    def seen(**query: object) -> list[str]:
        return _uuids(engine, namespaces=("team-b",), **query)

    assert seen(tag_prefix="c-") == []
    assert seen(tagged=True) == []
    assert seen(tagged=False) == [public.uuid]
    assert _uuids(engine, namespaces=("team-c",), tag_prefix="c-") == [public.uuid]


async def test_a_bare_untag_of_a_public_image_removes_only_the_callers_tags(
    engine: Engine, shared: ImageRecord
) -> None:
    left = engine.untag_image(shared, namespace="team-b")

    assert left.tags == ("shared:1",)
    assert engine.resolve_image("tag:c-name", namespaces=("team-c",)).uuid == shared.uuid
    assert engine.resolve_image("tag:shared:1", namespaces=("team-b",)).uuid == shared.uuid
    with pytest.raises(ImageNotFoundError):
        engine.resolve_image("tag:b-name", namespaces=("team-b",))


async def test_removing_a_public_tag_from_another_namespace_is_forbidden(
    engine: Engine, shared: ImageRecord
) -> None:
    with pytest.raises(ForbiddenError, match="public namespace"):
        engine.untag_image(shared, "shared:1", namespace="team-b")
    assert engine.resolve_image("tag:shared:1", namespaces=("team-b",)).uuid == shared.uuid


async def test_removing_another_namespaces_tag_is_answered_as_if_it_did_not_exist(
    engine: Engine, shared: ImageRecord
) -> None:
    with pytest.raises(InvalidRequestError) as theirs:
        engine.untag_image(shared, "c-name", namespace="team-b")
    with pytest.raises(InvalidRequestError) as nobodys:
        engine.untag_image(shared, "no-name", namespace="team-b")

    assert theirs.value.message.replace("c-name", "X") == nobodys.value.message.replace(
        "no-name", "X"
    )
    assert engine.resolve_image("tag:c-name", namespaces=("team-c",)).uuid == shared.uuid
