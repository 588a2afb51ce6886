from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
from typing import TYPE_CHECKING

import pytest

from sandtree.engine.layers._inspect import (
    FileItem,
    GrepMatch,
    GrepResult,
    format_ls,
    grep,
    list_dir,
    open_file,
    stat_path,
    write_tar,
)
from sandtree.errors import InvalidRequestError, PathNotFoundError

if TYPE_CHECKING:
    from conftest import SampleImage


def _names(items: list[FileItem]) -> list[str]:
    return [item.path for item in items]


def _tar_members(sample_rootfs: SampleImage, path: str) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    write_tar(sample_rootfs.root, path, out, uid_shift=sample_rootfs.uid_shift)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:") as tar:
        return {member.name: member for member in tar.getmembers()}


def _tar_bytes(sample_rootfs: SampleImage, path: str) -> bytes:
    out = io.BytesIO()
    write_tar(sample_rootfs.root, path, out, uid_shift=sample_rootfs.uid_shift)
    return out.getvalue()


def _grep(sample_rootfs: SampleImage, *patterns: str, **kwargs: object) -> GrepResult:
    return grep(sample_rootfs.root, list(patterns), uid_shift=sample_rootfs.uid_shift, **kwargs)  # type: ignore[arg-type]


def _lines(result: GrepResult) -> list[tuple[str, int, str]]:
    return [(m.path, m.line_number, m.type) for m in result.matches]


# --- stat and list -----------------------------------------------------------------------


def test_stat_path_reports_unshifted_ids_and_names_from_the_image_passwd(
    sample_rootfs: SampleImage,
) -> None:
    item = stat_path(sample_rootfs.root, "/home/app/notes.txt", uid_shift=sample_rootfs.uid_shift)
    assert (item.path, item.uid, item.gid, item.owner, item.group) == (
        "notes.txt",
        1000,
        4,
        "app",
        "adm",
    )
    assert item.is_regular
    assert not item.is_dir
    assert item.size == len(b"first line\nTODO: fix the thing\nthird line\n")
    assert item.mtime == sample_rootfs.mtime
    assert item.symlink_to == ""


def test_stat_path_of_the_root_is_named_slash(sample_rootfs: SampleImage) -> None:
    for path in ("/", ""):
        item = stat_path(sample_rootfs.root, path, uid_shift=sample_rootfs.uid_shift)
        assert (item.path, item.is_dir, item.owner) == ("/", True, "root")


def test_stat_path_without_follow_describes_the_symlink_itself(sample_rootfs: SampleImage) -> None:
    link = stat_path(sample_rootfs.root, "/lib", uid_shift=sample_rootfs.uid_shift, follow=False)
    target = stat_path(sample_rootfs.root, "/lib", uid_shift=sample_rootfs.uid_shift)
    assert (link.is_symlink, link.symlink_to, link.path) == (True, "usr/lib", "lib")
    assert (target.is_dir, target.is_symlink, target.symlink_to) == (True, False, "")


def test_stat_path_reports_ids_outside_the_shifted_range_as_they_are(
    sample_rootfs: SampleImage,
) -> None:
    os.chown(sample_rootfs.root / "etc" / "hostname", 65534, 12345)
    item = stat_path(sample_rootfs.root, "/etc/hostname", uid_shift=sample_rootfs.uid_shift)
    assert (item.uid, item.gid, item.owner, item.group) == (65534, 12345, 65534, 12345)


def test_stat_path_falls_back_to_numeric_ids_when_the_image_has_no_passwd(
    sample_rootfs: SampleImage,
) -> None:
    (sample_rootfs.root / "etc" / "passwd").unlink()
    item = stat_path(sample_rootfs.root, "/home/app", uid_shift=sample_rootfs.uid_shift)
    assert (item.owner, item.group) == (1000, "app")


def test_file_item_to_json_has_exactly_the_contree_fields(sample_rootfs: SampleImage) -> None:
    data = stat_path(
        sample_rootfs.root, "/etc/evil", uid_shift=sample_rootfs.uid_shift, follow=False
    ).to_json()
    assert list(data) == [
        "path",
        "size",
        "owner",
        "group",
        "uid",
        "gid",
        "mode",
        "mtime",
        "nlink",
        "is_dir",
        "is_regular",
        "is_symlink",
        "is_socket",
        "is_fifo",
        "symlink_to",
    ]
    assert data["symlink_to"] == str(sample_rootfs.secret)
    json.dumps(data)


def test_list_dir_is_sorted_and_describes_entries_without_following_them(
    sample_rootfs: SampleImage,
) -> None:
    items = list_dir(sample_rootfs.root, "/etc", uid_shift=sample_rootfs.uid_shift)
    assert _names(items) == [
        "apt",
        "dangling",
        "evil",
        "group",
        "hostname",
        "hostname.hardlink",
        "passwd",
        "up",
    ]
    by_name = {item.path: item for item in items}
    assert by_name["apt"].is_dir
    assert by_name["evil"].is_symlink
    assert by_name["hostname"].nlink == 2
    assert all(item.owner == "root" for item in items)


def test_list_dir_reports_special_files_by_kind(sample_rootfs: SampleImage) -> None:
    by_name = {
        i.path: i for i in list_dir(sample_rootfs.root, "/tmp", uid_shift=sample_rootfs.uid_shift)
    }
    assert by_name["fifo"].is_fifo
    assert by_name["app.sock"].is_socket
    assert stat.S_ISCHR(by_name["null"].mode)


def test_list_dir_follows_a_symlinked_directory_inside_the_image(
    sample_rootfs: SampleImage,
) -> None:
    assert _names(list_dir(sample_rootfs.root, "/lib", uid_shift=sample_rootfs.uid_shift)) == [
        "libdemo.so"
    ]


def test_list_dir_of_a_file_returns_a_one_element_list(sample_rootfs: SampleImage) -> None:
    [item] = list_dir(sample_rootfs.root, "/etc/hostname", uid_shift=sample_rootfs.uid_shift)
    assert (item.path, item.is_regular) == ("hostname", True)


def test_list_dir_of_a_dangling_symlink_describes_the_link(sample_rootfs: SampleImage) -> None:
    [item] = list_dir(sample_rootfs.root, "/etc/dangling", uid_shift=sample_rootfs.uid_shift)
    assert (item.is_symlink, item.symlink_to) == (True, "/does/not/exist")


def test_list_dir_of_a_missing_path_names_it_and_suggests_listing_the_parent(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(PathNotFoundError, match=r"/etc/nope.*list /etc"):
        list_dir(sample_rootfs.root, "/etc/nope", uid_shift=sample_rootfs.uid_shift)
    with pytest.raises(PathNotFoundError, match="/etc/hostname/x"):
        list_dir(sample_rootfs.root, "/etc/hostname/x", uid_shift=sample_rootfs.uid_shift)


def test_format_ls_renders_modes_owners_dates_and_link_targets(sample_rootfs: SampleImage) -> None:
    text = format_ls(list_dir(sample_rootfs.root, "/", uid_shift=sample_rootfs.uid_shift))
    lines = text.splitlines()
    assert text.endswith("\n")
    etc = next(line for line in lines if line.endswith(" etc"))
    assert etc.startswith("drwxr-xr-x ")
    assert " root root " in etc
    assert "2023-11-14 22:13" in etc
    assert any(
        line.startswith("lrwxrwxrwx ") and line.endswith(" lib -> usr/lib") for line in lines
    )
    secret = next(line for line in lines if line.endswith(" secret.txt"))
    assert secret.startswith("-rw-r--r-- ")
    # Columns are aligned, so every name starts at the same offset after the date.
    assert len({line.index("2023-11-14") for line in lines if "2023-11-14" in line}) == 1


def test_format_ls_of_nothing_is_empty() -> None:
    assert format_ls([]) == ""


# --- open_file -----------------------------------------------------------------------------


def test_open_file_reads_a_regular_file(sample_rootfs: SampleImage) -> None:
    with open_file(sample_rootfs.root, "/etc/hostname") as f:
        assert f.read() == b"sandbox\n"


def test_open_file_follows_symlinks_inside_the_image(sample_rootfs: SampleImage) -> None:
    with open_file(sample_rootfs.root, "/lib/libdemo.so") as f:
        assert f.read().startswith(b"\x7fELF")


def test_open_file_of_a_directory_says_to_use_list(sample_rootfs: SampleImage) -> None:
    with pytest.raises(InvalidRequestError, match="is a directory; use list"):
        open_file(sample_rootfs.root, "/etc")


def test_open_file_refuses_fifos_and_device_nodes(sample_rootfs: SampleImage) -> None:
    with pytest.raises(InvalidRequestError, match="FIFO"):
        open_file(sample_rootfs.root, "/tmp/fifo")
    with pytest.raises(InvalidRequestError, match="character device"):
        open_file(sample_rootfs.root, "/tmp/null")


def test_open_file_of_a_missing_path_raises_path_not_found(sample_rootfs: SampleImage) -> None:
    with pytest.raises(PathNotFoundError, match="/etc/nope"):
        open_file(sample_rootfs.root, "/etc/nope")


# --- escapes -------------------------------------------------------------------------------


def test_absolute_symlink_to_a_host_file_is_not_found_instead_of_read(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(PathNotFoundError):
        open_file(sample_rootfs.root, "/etc/evil")
    with pytest.raises(PathNotFoundError):
        stat_path(sample_rootfs.root, "/etc/evil", uid_shift=sample_rootfs.uid_shift)


def test_relative_symlink_climbing_out_reads_the_image_file(sample_rootfs: SampleImage) -> None:
    with open_file(sample_rootfs.root, "/etc/up") as f:
        assert f.read() == b"image secret.txt\n"


def test_dotdot_beyond_the_root_reads_the_image_file(sample_rootfs: SampleImage) -> None:
    with open_file(sample_rootfs.root, "/../../../secret.txt") as f:
        assert f.read() == b"image secret.txt\n"
    with open_file(sample_rootfs.root, "/dotdot/dotdot/secret.txt") as f:
        assert f.read() == b"image secret.txt\n"


def test_symlinked_parent_pointing_at_the_host_is_not_found(sample_rootfs: SampleImage) -> None:
    with pytest.raises(PathNotFoundError):
        open_file(sample_rootfs.root, "/hostdir/secret.txt")
    # Listing the link itself describes it (it dangles inside the image) and nothing behind it.
    [link] = list_dir(sample_rootfs.root, "/hostdir", uid_shift=sample_rootfs.uid_shift)
    assert (link.path, link.is_symlink) == ("hostdir", True)
    with pytest.raises(PathNotFoundError):
        write_tar(sample_rootfs.root, "/hostdir", io.BytesIO(), uid_shift=sample_rootfs.uid_shift)
    with pytest.raises(PathNotFoundError):
        grep(sample_rootfs.root, ["HOST"], uid_shift=sample_rootfs.uid_shift, paths=["/hostdir"])


def test_nothing_under_the_root_reaches_host_content(sample_rootfs: SampleImage) -> None:
    assert sample_rootfs.secret_content not in _tar_bytes(sample_rootfs, "/")
    assert _grep(sample_rootfs, "HOST SECRET").matches == []
    assert _grep(sample_rootfs, "HOST SECRET", paths=["/etc/up", "/dotdot"]).matches == []


def test_the_image_passwd_is_read_inside_the_root_even_when_it_is_a_hostile_symlink(
    sample_rootfs: SampleImage,
) -> None:
    passwd = sample_rootfs.root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to("/etc/shadow-on-host")
    item = stat_path(sample_rootfs.root, "/home/app", uid_shift=sample_rootfs.uid_shift)
    assert item.owner == 1000


# --- tar -----------------------------------------------------------------------------------


def test_write_tar_names_entries_relative_to_the_parent_of_the_path(
    sample_rootfs: SampleImage,
) -> None:
    assert sorted(_tar_members(sample_rootfs, "/etc/apt")) == [
        "apt",
        "apt/apt.conf.d",
        "apt/apt.conf.d/00proxy",
        "apt/sources.list",
    ]


def test_write_tar_round_trips_content_with_unshifted_owners(sample_rootfs: SampleImage) -> None:
    data = _tar_bytes(sample_rootfs, "/home")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        notes = tar.getmember("home/app/notes.txt")
        assert (notes.uid, notes.gid, notes.uname, notes.gname) == (1000, 4, "app", "adm")
        assert notes.mode == 0o644
        assert notes.mtime == sample_rootfs.mtime
        extracted = tar.extractfile(notes)
        assert extracted is not None
        assert extracted.read() == (sample_rootfs.root / "home/app/notes.txt").read_bytes()
        home = tar.getmember("home")
        assert (home.isdir(), home.uid, home.uname) == (True, 0, "root")


def test_write_tar_keeps_symlinks_as_symlinks_and_skips_sockets(sample_rootfs: SampleImage) -> None:
    members = _tar_members(sample_rootfs, "/")
    assert members["lib"].issym()
    assert members["lib"].linkname == "usr/lib"
    assert members["etc/evil"].linkname == str(sample_rootfs.secret)
    assert members["hostdir"].issym()
    assert "tmp/app.sock" not in members
    assert members["tmp/fifo"].isfifo()
    assert "." in members
    assert not any(name.startswith(("hostdir/", "lib/", "dotdot/")) for name in members)


def test_write_tar_stores_device_nodes_as_devices(sample_rootfs: SampleImage) -> None:
    null = _tar_members(sample_rootfs, "/tmp")["tmp/null"]
    assert null.ischr()
    assert (null.devmajor, null.devminor) == (1, 3)


def test_write_tar_stores_a_second_hard_link_as_a_link(sample_rootfs: SampleImage) -> None:
    members = _tar_members(sample_rootfs, "/etc")
    assert members["etc/hostname"].isfile()
    assert members["etc/hostname.hardlink"].islnk()
    assert members["etc/hostname.hardlink"].linkname == "etc/hostname"


def test_write_tar_of_a_single_file_is_one_entry(sample_rootfs: SampleImage) -> None:
    members = _tar_members(sample_rootfs, "/etc/hostname")
    assert list(members) == ["hostname"]
    assert members["hostname"].size == len(b"sandbox\n")


def test_write_tar_follows_a_symlinked_top_level_directory_inside_the_image(
    sample_rootfs: SampleImage,
) -> None:
    members = _tar_members(sample_rootfs, "/lib")
    assert sorted(members) == ["lib", "lib/libdemo.so"]
    assert members["lib"].isdir()


def test_write_tar_streams_to_a_sink_that_cannot_seek(sample_rootfs: SampleImage) -> None:
    chunks: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> int:
            chunks.append(bytes(data))
            return len(data)

    write_tar(sample_rootfs.root, "/etc", Sink(), uid_shift=sample_rootfs.uid_shift)  # type: ignore[arg-type]
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as tar:
        assert "etc/passwd" in tar.getnames()


def test_write_tar_of_a_missing_path_raises_before_writing(sample_rootfs: SampleImage) -> None:
    out = io.BytesIO()
    with pytest.raises(PathNotFoundError):
        write_tar(sample_rootfs.root, "/nope", out, uid_shift=sample_rootfs.uid_shift)
    assert out.getvalue() == b""


# --- grep ----------------------------------------------------------------------------------


def test_grep_reports_lines_offsets_and_submatches(sample_rootfs: SampleImage) -> None:
    result = _grep(sample_rootfs, "fix the", paths=["/home"])
    [match] = result.matches
    assert match == GrepMatch(
        path="/home/app/notes.txt",
        line_number=2,
        absolute_offset=len(b"first line\n"),
        line_text="TODO: fix the thing\n",
        line_bytes=len(b"TODO: fix the thing\n"),
        submatches=[{"text": "fix the", "start": 6, "end": 13}],
        type="match",
    )
    assert (result.path, result.patterns, result.truncated) == ("/home", ["fix the"], False)
    json.dumps(result.to_json())


def test_grep_walks_files_in_sorted_order_and_skips_binary_files(
    sample_rootfs: SampleImage,
) -> None:
    result = _grep(sample_rootfs, "TODO")
    assert [m.path for m in result.matches] == [
        "/home/app/notes.txt",
        "/srv/app/README.md",
        "/srv/app/main.py",
        "/srv/app/vendor/lib.py",
    ]


def test_grep_does_not_descend_symlinked_directories(sample_rootfs: SampleImage) -> None:
    (sample_rootfs.root / "usr" / "lib" / "notes.txt").write_bytes(b"TODO: only once\n")
    paths = [m.path for m in _grep(sample_rootfs, "only once").matches]
    assert paths == ["/usr/lib/notes.txt"]


def test_grep_follows_an_explicit_symlinked_search_path(sample_rootfs: SampleImage) -> None:
    (sample_rootfs.root / "usr" / "lib" / "notes.txt").write_bytes(b"TODO: only once\n")
    assert [m.path for m in _grep(sample_rootfs, "only", paths=["/lib"]).matches] == [
        "/lib/notes.txt"
    ]


def test_grep_is_case_sensitive_by_default(sample_rootfs: SampleImage) -> None:
    assert _grep(sample_rootfs, "todo:", paths=["/srv"]).matches == []
    assert len(_grep(sample_rootfs, "todo:", paths=["/srv"], case="insensitive").matches) == 3


def test_grep_smart_case_is_insensitive_unless_a_pattern_has_an_uppercase_letter(
    sample_rootfs: SampleImage,
) -> None:
    assert len(_grep(sample_rootfs, "todo:", paths=["/srv"], case="smart").matches) == 3
    assert len(_grep(sample_rootfs, "Todo:", paths=["/srv"], case="smart").matches) == 0
    # Escapes such as \S are not uppercase letters.
    assert len(_grep(sample_rootfs, r"todo:\S", paths=["/srv"], case="smart").matches) == 0
    assert len(_grep(sample_rootfs, r"todo:\s", paths=["/srv"], case="smart").matches) == 3


def test_grep_fixed_strings_treats_regex_characters_literally(sample_rootfs: SampleImage) -> None:
    assert _grep(sample_rootfs, "print('hi')", paths=["/srv"]).matches == []
    [match] = _grep(sample_rootfs, "print('hi')", paths=["/srv"], fixed_strings=True).matches
    assert match.line_number == 3


def test_grep_any_of_several_patterns_matches_and_submatches_do_not_overlap(
    sample_rootfs: SampleImage,
) -> None:
    result = _grep(sample_rootfs, "fix", "fix the", "thing", paths=["/home"])
    [match] = result.matches
    assert [(s["start"], s["end"]) for s in match.submatches] == [(6, 13), (14, 19)]


def test_grep_emits_context_lines_once_when_windows_overlap(sample_rootfs: SampleImage) -> None:
    (sample_rootfs.root / "srv" / "ctx.txt").write_bytes(b"a\nb\nhit 1\nc\nhit 2\nd\ne\nf\n")
    result = _grep(sample_rootfs, "hit", paths=["/srv/ctx.txt"], before=2, after=1)
    assert [(m.line_number, m.type) for m in result.matches] == [
        (1, "context"),
        (2, "context"),
        (3, "match"),
        (4, "context"),
        (5, "match"),
        (6, "context"),
    ]
    assert all(m.submatches == [] for m in result.matches if m.type == "context")


def test_grep_max_count_limits_matching_lines_per_file(sample_rootfs: SampleImage) -> None:
    (sample_rootfs.root / "srv" / "many.txt").write_bytes(b"x 1\nx 2\nx 3\n")
    (sample_rootfs.root / "srv" / "more.txt").write_bytes(b"x 4\nx 5\n")
    result = _grep(sample_rootfs, "x", paths=["/srv/many.txt", "/srv/more.txt"], max_count=1)
    assert [m.line_text for m in result.matches] == ["x 1\n", "x 4\n"]
    assert not result.truncated


def test_grep_max_total_truncates_only_when_more_matches_exist(sample_rootfs: SampleImage) -> None:
    result = _grep(sample_rootfs, "TODO", max_total=2)
    assert (len(result.matches), result.truncated) == (2, True)
    exact = _grep(sample_rootfs, "TODO", max_total=4)
    assert (len(exact.matches), exact.truncated) == (4, False)


def test_grep_stops_at_the_deadline_and_says_so(sample_rootfs: SampleImage) -> None:
    result = _grep(sample_rootfs, "TODO", deadline=time.monotonic() - 1)
    assert (result.matches, result.truncated) == ([], True)


def test_grep_glob_matches_basename_or_relative_path(sample_rootfs: SampleImage) -> None:
    by_name = _grep(sample_rootfs, "TODO", glob=["*.py"])
    assert [m.path for m in by_name.matches] == ["/srv/app/main.py", "/srv/app/vendor/lib.py"]
    by_rel = _grep(sample_rootfs, "TODO", paths=["/srv"], glob=["app/vendor/*"])
    assert [m.path for m in by_rel.matches] == ["/srv/app/vendor/lib.py"]
    many = _grep(sample_rootfs, "TODO", glob=["*.md", "notes.txt"])
    assert [m.path for m in many.matches] == ["/home/app/notes.txt", "/srv/app/README.md"]


def test_grep_negated_glob_excludes_files_and_prunes_directories(
    sample_rootfs: SampleImage,
) -> None:
    no_py = _grep(sample_rootfs, "TODO", glob=["!*.py"])
    assert [m.path for m in no_py.matches] == ["/home/app/notes.txt", "/srv/app/README.md"]
    no_vendor = _grep(sample_rootfs, "TODO", glob=["*.py", "!vendor"])
    assert [m.path for m in no_vendor.matches] == ["/srv/app/main.py"]


def test_grep_skips_files_larger_than_max_filesize(sample_rootfs: SampleImage) -> None:
    assert len(_grep(sample_rootfs, "TODO", paths=["/srv"], max_filesize=20).matches) == 1


def test_grep_caps_line_text_but_reports_the_real_line_length(sample_rootfs: SampleImage) -> None:
    line = b"needle " + b"x" * 10_000 + b"\n"
    (sample_rootfs.root / "srv" / "long.txt").write_bytes(line)
    [match] = _grep(sample_rootfs, "needle", paths=["/srv/long.txt"]).matches
    assert len(match.line_text.encode()) == 4096
    assert match.line_bytes == len(line)


def test_grep_matches_anchors_per_line_and_reports_the_last_line_without_newline(
    sample_rootfs: SampleImage,
) -> None:
    (sample_rootfs.root / "srv" / "anchors.txt").write_bytes(b"end\nmiddle end here\nlast end")
    result = _grep(sample_rootfs, "end$", r"\Aend", paths=["/srv/anchors.txt"])
    assert [(m.line_number, m.line_text) for m in result.matches] == [(1, "end\n"), (3, "last end")]


def test_grep_rejects_an_invalid_regex_naming_the_pattern(sample_rootfs: SampleImage) -> None:
    with pytest.raises(InvalidRequestError, match=r"invalid regex 'a\(b'.*missing \)"):
        _grep(sample_rootfs, "ok", "a(b")


def test_grep_rejects_an_unknown_case_mode_and_no_patterns(sample_rootfs: SampleImage) -> None:
    with pytest.raises(InvalidRequestError, match="case"):
        _grep(sample_rootfs, "x", case="loud")
    with pytest.raises(InvalidRequestError, match="pattern"):
        _grep(sample_rootfs)


def test_grep_of_a_missing_path_raises_path_not_found(sample_rootfs: SampleImage) -> None:
    with pytest.raises(PathNotFoundError, match="/nope"):
        _grep(sample_rootfs, "x", paths=["/nope"])


def test_grep_finds_line_matches_that_a_whole_file_search_would_miss(
    sample_rootfs: SampleImage,
) -> None:
    (sample_rootfs.root / "srv" / "tricky.txt").write_bytes(b"foo  \nbar\nbaz\n")
    for pattern, line in ((r"foo\s*$", 1), (r"\Abar", 2), (r"^bar\z", 2), (r"(?-m)^baz$", 3)):
        [match] = _grep(sample_rootfs, pattern, paths=["/srv/tricky.txt"]).matches
        assert match.line_number == line
