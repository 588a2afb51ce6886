"""Merging is checked against the kernel: the overlay view of the original stack and of the
base plus the merged layer must be the same tree (types, modes, owners, mtimes, content,
link targets, xattrs, hardlink groups)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from layer_testkit import (
    UID_SHIFT,
    Member,
    directory,
    fifo,
    file,
    hardlink,
    make_layer,
    opaque,
    overlay_view,
    snapshot,
    symlink,
    whiteout,
)

from sandtree.engine.layers._merge import layer_size, merge_layers
from sandtree.errors import InvalidRequestError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts, mknod")

ROOT = directory(".")

SCENARIOS: dict[str, list[list[Member]]] = {
    "file deleted in a higher layer": [
        [ROOT, directory("etc"), file("etc/debian_version", b"12"), file("etc/keep", b"k")],
        [directory("etc"), file("etc/added", b"a")],
        [directory("etc"), whiteout("etc/debian_version"), whiteout("etc/added")],
    ],
    "replaced (opaque) dir": [
        [ROOT, directory("etc/apt/conf.d"), file("etc/apt/sources.list"), file("etc/apt/conf.d/x")],
        [directory("etc/apt"), file("etc/apt/extra", b"e")],
        [directory("etc/apt", mode=0o700), opaque("etc/apt"), file("etc/apt/new", b"n")],
        [directory("etc/apt"), file("etc/apt/more", b"m")],
    ],
    "file replaced by dir and dir by file": [
        [ROOT, file("a", b"file a"), directory("d"), file("d/x", b"x")],
        [directory("a"), file("a/inner", b"i"), file("d", b"now a file")],
        [directory("a"), file("a/more", b"m"), directory("d"), file("d/y", b"y")],
    ],
    "dir over dir merges with the higher metadata": [
        [ROOT, directory("d"), file("d/base", b"b")],
        [directory("d", mode=0o700, uid=1000, gid=1000), file("d/one", b"1")],
        [
            directory("d", mode=0o750, uid=1000, gid=50, pax={"SCHILY.xattr.user.tag": "v"}),
            file("d/two", b"2"),
        ],
    ],
    "deleted then recreated": [
        [ROOT, file("f", b"old"), directory("g"), file("g/old", b"o"), directory("h/deep")],
        [whiteout("f"), whiteout("g"), whiteout("h")],
        [file("f", b"new"), directory("g"), file("g/new", b"n"), file("h", b"h is a file")],
    ],
    "symlinks fifos hardlinks and setuid": [
        [ROOT, directory("bin"), file("bin/busybox", b"bb", mode=0o755), file("etc/conf", b"c")],
        [
            symlink("bin/sh", "busybox"),
            fifo("run/pipe"),
            file("bin/su", b"su", mode=0o4755),
            hardlink("bin/su2", "bin/su"),
        ],
        [symlink("etc/conf", "/dev/null"), file("run/pipe", b"not a pipe"), whiteout("bin/su")],
    ],
    "whiteout inside an opaque dir of a lower merged layer": [
        [ROOT, directory("var/lib"), file("var/lib/a"), file("var/lib/b")],
        [directory("var/lib"), opaque("var/lib"), file("var/lib/b", b"mine"), file("var/lib/c")],
        [
            directory("var/lib"),
            whiteout("var/lib/b"),
            whiteout("var/lib/a"),
            directory("var/lib/d"),
        ],
    ],
    "dir over a lower whiteout in a subdir": [
        [ROOT, directory("x/y"), file("x/y/z", b"z"), file("x/keep")],
        [directory("x"), whiteout("x/y")],
        [directory("x/y/w"), file("x/y/w/f", b"f")],
    ],
}


def _layers(tmp_path: Path, scenario: list[list[Member]]) -> list[Path]:
    return [make_layer(tmp_path, f"L{i}", *members) for i, members in enumerate(scenario)]


def _view(tmp_path: Path, name: str, layers: list[Path]) -> dict[str, object]:
    with overlay_view(layers, tmp_path / name) as view:
        return dict(snapshot(view))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_merged_layer_over_the_base_gives_the_same_overlay_view_as_the_stack(
    tmp_path: Path, name: str
) -> None:
    base, *uppers = _layers(tmp_path, SCENARIOS[name])
    merged = tmp_path / "merged"

    merge_layers(uppers, merged)

    expected = _view(tmp_path, "view-stack", [base, *uppers])
    assert _view(tmp_path, "view-merged", [base, merged]) == expected


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_merging_only_the_upper_part_of_a_stack_keeps_the_view(tmp_path: Path, name: str) -> None:
    base, first, *rest = _layers(tmp_path, SCENARIOS[name])
    if not rest:
        pytest.skip("needs at least three layers")
    merged = tmp_path / "merged"

    merge_layers(rest, merged)

    expected = _view(tmp_path, "view-stack", [base, first, *rest])
    assert _view(tmp_path, "view-merged", [base, first, merged]) == expected


def _is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def test_file_deleted_in_a_higher_layer_leaves_a_whiteout_for_the_base(tmp_path: Path) -> None:
    _base, *uppers = _layers(tmp_path, SCENARIOS["file deleted in a higher layer"])
    merged = tmp_path / "merged"

    merge_layers(uppers, merged)

    assert _is_whiteout(merged / "etc" / "debian_version")
    assert _is_whiteout(merged / "etc" / "added")


def test_dir_replacing_a_lower_file_or_whiteout_becomes_opaque(tmp_path: Path) -> None:
    _base, *uppers = _layers(tmp_path, SCENARIOS["deleted then recreated"])
    merged = tmp_path / "merged"

    merge_layers(uppers, merged)

    assert _is_opaque(merged / "g")
    assert sorted(os.listdir(merged / "g")) == ["new"]
    assert (merged / "h").read_bytes() == b"h is a file"
    assert (merged / "f").read_bytes() == b"new"


def test_opaque_dir_in_a_higher_layer_replaces_the_merged_dir(tmp_path: Path) -> None:
    _base, *uppers = _layers(tmp_path, SCENARIOS["replaced (opaque) dir"])
    merged = tmp_path / "merged"

    merge_layers(uppers, merged)

    apt = merged / "etc" / "apt"
    assert _is_opaque(apt)
    assert sorted(os.listdir(apt)) == ["more", "new"]
    assert stat.S_IMODE(os.lstat(apt).st_mode) == 0o755  # the top layer's metadata


def test_whiteouts_under_an_opaque_dir_are_not_needed(tmp_path: Path) -> None:
    _base, *uppers = _layers(
        tmp_path, SCENARIOS["whiteout inside an opaque dir of a lower merged layer"]
    )
    merged = tmp_path / "merged"

    merge_layers(uppers, merged)

    assert sorted(os.listdir(merged / "var" / "lib")) == ["c", "d"]


def test_regular_files_are_hard_links_to_the_source_layers(tmp_path: Path) -> None:
    _base, first, second = _layers(tmp_path, SCENARIOS["symlinks fifos hardlinks and setuid"])
    merged = tmp_path / "merged"

    merge_layers([first, second], merged)

    assert os.lstat(merged / "bin" / "su2").st_ino == os.lstat(first / "bin" / "su2").st_ino
    assert os.lstat(merged / "run" / "pipe").st_ino == os.lstat(second / "run" / "pipe").st_ino
    assert os.readlink(merged / "bin" / "sh") == "busybox"
    assert os.lstat(merged / "bin" / "sh").st_uid == UID_SHIFT
    assert _is_whiteout(merged / "bin" / "su")


def test_merge_returns_the_number_of_entries(tmp_path: Path) -> None:
    _base, *uppers = _layers(tmp_path, SCENARIOS["file deleted in a higher layer"])

    count = merge_layers(uppers, tmp_path / "merged")

    # etc, etc/debian_version (whiteout), etc/added (whiteout)
    assert count == 3


def test_merge_refuses_a_non_empty_destination_or_no_layers(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, "L", file("a"))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "junk").touch()

    with pytest.raises(InvalidRequestError, match="not empty"):
        merge_layers([layer], dest)
    with pytest.raises(InvalidRequestError, match="at least one layer"):
        merge_layers([], tmp_path / "other")


def test_layer_size_counts_hardlinked_files_once_and_ignores_other_entries(
    tmp_path: Path,
) -> None:
    layer = make_layer(
        tmp_path,
        "L",
        file("a", bytes(1000)),
        hardlink("b", "a"),
        file("c", bytes(24)),
        symlink("s", "a" * 200),
        whiteout("gone"),
        directory("d"),
    )

    assert layer_size(layer) == 1024
