"""Inspection through the engine: list, stat, read, tar and grep an image's merged view."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandtree.engine import Engine, ImageRecord, PlacedFile
from sandtree.errors import InvalidRequestError, PathNotFoundError
from sandtree.testing import make_child, read_file

pytestmark = pytest.mark.anyio


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


@pytest.fixture
async def layered(engine: Engine, base: ImageRecord) -> ImageRecord:
    """Three layers over the base: files added, one changed, one deleted."""
    a = await make_child(
        engine, base, "write /srv/app/main.py print(1); write /srv/app/old.txt old"
    )
    b = await make_child(engine, a, "write /srv/app/main.py print(2) # needle; rm /srv/app/old.txt")
    return await make_child(engine, b, "write /srv/app/notes.md a needle here; rm /etc/hostname")


async def test_list_dir_shows_the_merged_view_without_whiteouts(
    engine: Engine, layered: ImageRecord
) -> None:
    items = engine.list_dir(layered, "/srv/app")

    assert [i.path for i in items] == ["main.py", "notes.md"]
    assert all(i.is_regular for i in items)
    assert "hostname" not in {i.path for i in engine.list_dir(layered, "/etc")}


async def test_list_dir_of_a_file_describes_that_file(engine: Engine, layered: ImageRecord) -> None:
    items = engine.list_dir(layered, "/srv/app/notes.md")

    assert len(items) == 1
    assert items[0].path == "notes.md"
    assert items[0].size == len(b"a needle here")


async def test_stat_path_reports_the_top_layer_version(
    engine: Engine, layered: ImageRecord
) -> None:
    item = engine.stat_path(layered, "/srv/app/main.py")

    assert item.is_regular
    assert item.size == len(b"print(2) # needle")
    assert read_file(engine, layered, "/srv/app/main.py") == b"print(2) # needle"


async def test_stat_of_an_imported_file_reports_image_ids_and_names(
    engine: Engine, base: ImageRecord
) -> None:
    item = engine.stat_path(base, "/etc/passwd")

    assert (item.uid, item.gid) == (0, 0)
    assert (item.owner, item.group) == ("root", "root")


async def test_stat_of_a_symlink_follows_it_inside_the_image(
    engine: Engine, base: ImageRecord
) -> None:
    item = engine.stat_path(base, "/bin/sh")

    assert item.is_regular  # /bin/sh -> busybox
    listed = {i.path: i for i in engine.list_dir(base, "/bin")}
    assert listed["sh"].is_symlink
    assert listed["sh"].symlink_to == "busybox"


async def test_missing_and_deleted_paths_are_not_found(
    engine: Engine, layered: ImageRecord
) -> None:
    for path in ("/srv/app/old.txt", "/etc/hostname", "/nope", "/srv/app/main.py/x"):
        with pytest.raises(PathNotFoundError):
            engine.stat_path(layered, path)
    with pytest.raises(PathNotFoundError):
        engine.list_dir(layered, "/nope")
    with pytest.raises(PathNotFoundError):
        engine.open_file(layered, "/srv/app/old.txt")


async def test_open_file_of_a_directory_is_invalid(engine: Engine, layered: ImageRecord) -> None:
    with pytest.raises(InvalidRequestError):
        engine.open_file(layered, "/srv/app")


async def test_write_tar_archives_the_merged_directory(
    engine: Engine, layered: ImageRecord
) -> None:
    out = io.BytesIO()
    engine.write_tar(layered, "/srv", out)

    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        names = sorted(tar.getnames())
        main = tar.extractfile("srv/app/main.py")
        assert main is not None
        content = main.read()
    assert names == ["srv", "srv/app", "srv/app/main.py", "srv/app/notes.md"]
    assert content == b"print(2) # needle"


async def test_write_tar_of_a_missing_path_writes_nothing(
    engine: Engine, layered: ImageRecord
) -> None:
    out = io.BytesIO()

    with pytest.raises(PathNotFoundError):
        engine.write_tar(layered, "/srv/app/old.txt", out)
    assert out.getvalue() == b""


async def test_grep_finds_lines_across_layers_but_not_in_deleted_files(
    engine: Engine, layered: ImageRecord
) -> None:
    result = await engine.grep(layered, ["needle|old"], paths=["/srv"])

    found = sorted((m.path, m.line_text) for m in result.matches if m.type == "match")
    assert [path for path, _ in found] == ["/srv/app/main.py", "/srv/app/notes.md"]
    assert all("needle" in text for _, text in found)
    assert result.truncated is False


async def test_inspection_sees_a_placed_file_with_its_owner(
    engine: Engine, base: ImageRecord
) -> None:
    async def content() -> object:
        yield b"owned"

    record = await engine.upload_file(content())  # type: ignore[arg-type]
    placed = PlacedFile(uuid=record.uuid, path="/home/user/f", mode=0o640, uid=1000, gid=1000)
    child = await make_child(engine, base, "echo", files=(placed,))

    listed = {i.path: i for i in engine.list_dir(child, "/home/user")}

    assert listed["f"].owner == "user"
    assert listed["f"].mode & 0o777 == 0o640


async def test_absolute_symlink_to_a_host_path_resolves_inside_the_image(
    engine: Engine, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"HOST")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "link").symlink_to(secret)
    image = await engine.import_local(rootfs)

    with pytest.raises(PathNotFoundError):
        engine.open_file(image, "/etc/link")
    with pytest.raises(PathNotFoundError):
        engine.stat_path(image, "/etc/link")
    item = engine.list_dir(image, "/etc")[0]
    assert item.is_symlink
    assert item.symlink_to == str(secret)


async def test_views_of_many_images_are_bounded(engine: Engine, base: ImageRecord) -> None:
    images = [base]
    for i in range(40):
        images.append(await make_child(engine, images[-1], f"write /f{i} {i}"))

    for image in images:
        assert engine.stat_path(image, "/etc/passwd").is_regular

    assert len(_mounts_under(engine.layers.views_dir)) <= 32


async def test_deleting_an_image_unmounts_its_view(engine: Engine, layered: ImageRecord) -> None:
    engine.list_dir(layered, "/")
    before = _mounts_under(engine.layers.views_dir)

    engine.delete_image(layered)

    assert len(_mounts_under(engine.layers.views_dir)) == len(before) - 1


async def test_mounted_view_is_read_only(engine: Engine, layered: ImageRecord) -> None:
    with engine.mounted(layered) as root, pytest.raises(OSError, match="Read-only"):
        (root / "tmp" / "scribble").write_text("x", encoding="utf-8")
    assert "scribble" not in {i.path for i in engine.list_dir(layered, "/tmp")}


async def test_mounted_view_of_a_single_layer_image_is_read_only(
    engine: Engine, base: ImageRecord
) -> None:
    # The docstring promises a read-only root; a one-layer image must not expose its layer
    # directory for writing (that would change the image and every child of it).
    with engine.mounted(base) as root:
        try:
            (root / "tmp" / "scribble").write_text("x", encoding="utf-8")
        except OSError:
            pass
        finally:
            scribbled = (root / "tmp" / "scribble").exists()
            if scribbled:
                os.unlink(root / "tmp" / "scribble")
    assert not scribbled
