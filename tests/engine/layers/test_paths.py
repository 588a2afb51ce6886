from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandtree.engine.layers._paths import (
    SpecialFileError,
    lstat_beneath,
    make_parents_in_root,
    normalise_path,
    open_regular,
    open_root,
    openat2,
    resolve_in_root,
    user_error,
    walk_tree,
    write_file_in_root,
)
from sandtree.errors import InvalidRequestError, PathNotFoundError

if TYPE_CHECKING:
    from conftest import SampleImage

SHIFT = 100000


def _same_file(fd: int, path: Path) -> bool:
    st = os.fstat(fd)
    other = os.stat(path, follow_symlinks=False)
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _resolves_to(
    sample_rootfs: SampleImage, path: str, expected: Path, *, follow_last: bool = True
) -> bool:
    fd = resolve_in_root(sample_rootfs.root, path, follow_last=follow_last)
    try:
        return _same_file(fd, expected)
    finally:
        os.close(fd)


def test_normalise_path_treats_empty_as_root_and_relative_as_absolute() -> None:
    assert normalise_path("") == "/"
    assert normalise_path("etc/passwd") == "/etc/passwd"
    assert normalise_path("/etc") == "/etc"


def test_normalise_path_rejects_nul_bytes() -> None:
    with pytest.raises(InvalidRequestError, match="NUL"):
        normalise_path("/etc/passwd\x00.txt")


def test_resolve_in_root_rejects_nul_bytes_with_invalid_request(sample_rootfs: SampleImage) -> None:
    with pytest.raises(InvalidRequestError, match="NUL"):
        resolve_in_root(sample_rootfs.root, "/etc\x00/passwd")


def test_resolve_in_root_finds_plain_files(sample_rootfs: SampleImage) -> None:
    assert _resolves_to(sample_rootfs, "/etc/hostname", sample_rootfs.root / "etc" / "hostname")
    assert _resolves_to(sample_rootfs, "", sample_rootfs.root)


def test_resolve_in_root_reports_missing_paths_as_oserror(sample_rootfs: SampleImage) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_in_root(sample_rootfs.root, "/etc/nope")


def test_absolute_symlink_to_a_host_file_resolves_inside_the_root(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_in_root(sample_rootfs.root, "/etc/evil")
    mirror = sample_rootfs.root / str(sample_rootfs.secret).lstrip("/")
    mirror.parent.mkdir(parents=True)
    mirror.write_bytes(b"in-image copy\n")
    assert _resolves_to(sample_rootfs, "/etc/evil", mirror)


def test_relative_symlink_climbing_out_is_clamped_at_the_image_root(
    sample_rootfs: SampleImage,
) -> None:
    assert _resolves_to(sample_rootfs, "/etc/up", sample_rootfs.root / "secret.txt")


def test_dotdot_in_a_path_is_clamped_at_the_image_root(sample_rootfs: SampleImage) -> None:
    assert _resolves_to(sample_rootfs, "/../../../../secret.txt", sample_rootfs.root / "secret.txt")
    assert _resolves_to(sample_rootfs, "/etc/../../secret.txt", sample_rootfs.root / "secret.txt")


def test_symlinked_parent_directory_pointing_at_the_host_resolves_inside_the_root(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_in_root(sample_rootfs.root, "/hostdir/secret.txt")
    assert _resolves_to(sample_rootfs, "/dotdot/secret.txt", sample_rootfs.root / "secret.txt")
    assert _resolves_to(
        sample_rootfs, "/dotdot/dotdot/etc/hostname", sample_rootfs.root / "etc" / "hostname"
    )


def test_resolve_in_root_without_follow_last_returns_the_symlink_itself(
    sample_rootfs: SampleImage,
) -> None:
    assert _resolves_to(
        sample_rootfs, "/etc/evil", sample_rootfs.root / "etc" / "evil", follow_last=False
    )
    fd = resolve_in_root(sample_rootfs.root, "/etc/evil", follow_last=False)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_openat2_raises_oserror_with_the_errno(sample_rootfs: SampleImage) -> None:
    rootfd = open_root(sample_rootfs.root)
    try:
        with pytest.raises(NotADirectoryError) as info:
            openat2(rootfd, "/etc/hostname/x", os.O_PATH)
        assert info.value.errno == errno.ENOTDIR
    finally:
        os.close(rootfd)


def test_user_error_turns_a_missing_path_into_path_not_found_naming_the_parent() -> None:
    error = user_error("/etc/nope", FileNotFoundError(errno.ENOENT, "No such file"))
    assert isinstance(error, PathNotFoundError)
    assert "/etc/nope" in str(error)
    assert "list /etc" in str(error)


def test_make_parents_creates_missing_directories_with_the_given_owner_and_exact_mode(
    sample_rootfs: SampleImage,
) -> None:
    rootfd = open_root(sample_rootfs.root)
    old_umask = os.umask(0o077)
    try:
        parent = make_parents_in_root(
            rootfd, "/opt/tool/bin/run", uid=SHIFT + 7, gid=SHIFT + 8, mode=0o751
        )
    finally:
        os.umask(old_umask)
        os.close(rootfd)
    try:
        assert _same_file(parent, sample_rootfs.root / "opt" / "tool" / "bin")
    finally:
        os.close(parent)
    for rel in ("opt", "opt/tool", "opt/tool/bin"):
        st = os.stat(sample_rootfs.root / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SHIFT + 7, SHIFT + 8, 0o751)
    assert not (sample_rootfs.root / "opt" / "tool" / "bin" / "run").exists()


def test_make_parents_leaves_existing_directories_untouched(sample_rootfs: SampleImage) -> None:
    before = os.stat(sample_rootfs.root / "etc")
    rootfd = open_root(sample_rootfs.root)
    try:
        os.close(make_parents_in_root(rootfd, "/etc/new/file", uid=0, gid=0))
    finally:
        os.close(rootfd)
    after = os.stat(sample_rootfs.root / "etc")
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert os.stat(sample_rootfs.root / "etc" / "new").st_uid == 0


def test_make_parents_rejects_a_component_that_is_a_file(sample_rootfs: SampleImage) -> None:
    rootfd = open_root(sample_rootfs.root)
    try:
        with pytest.raises(
            InvalidRequestError, match="/etc/hostname exists and is not a directory"
        ):
            make_parents_in_root(rootfd, "/etc/hostname/sub/file", uid=0, gid=0)
    finally:
        os.close(rootfd)


def test_make_parents_rejects_a_symlink_to_a_missing_directory(sample_rootfs: SampleImage) -> None:
    rootfd = open_root(sample_rootfs.root)
    try:
        with pytest.raises(InvalidRequestError, match="symlink to a missing directory"):
            make_parents_in_root(rootfd, "/etc/dangling/file", uid=0, gid=0)
    finally:
        os.close(rootfd)


def test_make_parents_through_a_symlinked_parent_creates_directories_inside_the_root(
    sample_rootfs: SampleImage,
) -> None:
    host_dir = sample_rootfs.secret.parent
    (sample_rootfs.root / str(host_dir).lstrip("/")).mkdir(parents=True)
    rootfd = open_root(sample_rootfs.root)
    try:
        os.close(make_parents_in_root(rootfd, "/hostdir/planted/file", uid=0, gid=0))
    finally:
        os.close(rootfd)
    assert not (host_dir / "planted").exists()
    assert (sample_rootfs.root / str(host_dir).lstrip("/") / "planted").is_dir()


def test_make_parents_refuses_a_parent_symlink_that_only_resolves_on_the_host(
    sample_rootfs: SampleImage,
) -> None:
    rootfd = open_root(sample_rootfs.root)
    try:
        with pytest.raises(InvalidRequestError, match="/hostdir: it is a symlink to a missing"):
            make_parents_in_root(rootfd, "/hostdir/planted/file", uid=0, gid=0)
    finally:
        os.close(rootfd)
    assert not (sample_rootfs.secret.parent / "planted").exists()


def test_write_file_in_root_creates_the_file_and_parents_with_owner_and_mode(
    sample_rootfs: SampleImage,
) -> None:
    write_file_in_root(
        sample_rootfs.root,
        "/opt/app/config.toml",
        b"x = 1\n",
        mode=0o640,
        uid=SHIFT + 1000,
        gid=SHIFT,
    )
    target = sample_rootfs.root / "opt" / "app" / "config.toml"
    st = os.stat(target)
    assert target.read_bytes() == b"x = 1\n"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SHIFT + 1000, SHIFT, 0o640)
    assert os.stat(target.parent).st_uid == SHIFT + 1000


def test_write_file_in_root_copies_a_binary_stream_and_truncates_old_content(
    sample_rootfs: SampleImage,
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    write_file_in_root(
        sample_rootfs.root, "/etc/hostname", io.BytesIO(data), mode=0o644, uid=0, gid=0
    )
    assert (sample_rootfs.root / "etc" / "hostname").read_bytes() == data
    write_file_in_root(sample_rootfs.root, "/etc/hostname", b"short\n", mode=0o644, uid=0, gid=0)
    assert (sample_rootfs.root / "etc" / "hostname").read_bytes() == b"short\n"


def test_write_file_in_root_keeps_a_setuid_bit(sample_rootfs: SampleImage) -> None:
    write_file_in_root(sample_rootfs.root, "/usr/bin/su", b"#!", mode=0o4755, uid=SHIFT, gid=SHIFT)
    assert stat.S_IMODE(os.stat(sample_rootfs.root / "usr" / "bin" / "su").st_mode) == 0o4755


def test_write_file_in_root_replaces_an_absolute_symlink_instead_of_following_it(
    sample_rootfs: SampleImage,
) -> None:
    write_file_in_root(sample_rootfs.root, "/etc/evil", b"replaced\n", mode=0o644, uid=0, gid=0)
    evil = sample_rootfs.root / "etc" / "evil"
    assert not evil.is_symlink()
    assert evil.read_bytes() == b"replaced\n"
    assert sample_rootfs.secret.read_bytes() == sample_rootfs.secret_content


def test_write_file_in_root_replaces_a_relative_escaping_symlink(
    sample_rootfs: SampleImage,
) -> None:
    write_file_in_root(sample_rootfs.root, "/etc/up", b"replaced\n", mode=0o644, uid=0, gid=0)
    assert (sample_rootfs.root / "etc" / "up").read_bytes() == b"replaced\n"
    assert (sample_rootfs.root / "secret.txt").read_bytes() == b"image secret.txt\n"
    assert sample_rootfs.secret.read_bytes() == sample_rootfs.secret_content


def test_write_file_in_root_through_a_symlinked_parent_lands_inside_the_root(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(InvalidRequestError):
        write_file_in_root(
            sample_rootfs.root, "/hostdir/secret.txt", b"pwned\n", mode=0o644, uid=0, gid=0
        )
    assert sample_rootfs.secret.read_bytes() == sample_rootfs.secret_content
    inside = sample_rootfs.root / str(sample_rootfs.secret).lstrip("/")
    inside.parent.mkdir(parents=True)
    write_file_in_root(
        sample_rootfs.root, "/hostdir/secret.txt", b"pwned\n", mode=0o644, uid=0, gid=0
    )
    assert sample_rootfs.secret.read_bytes() == sample_rootfs.secret_content
    assert inside.read_bytes() == b"pwned\n"


def test_write_file_in_root_through_a_dotdot_symlink_parent_lands_inside_the_root(
    sample_rootfs: SampleImage,
) -> None:
    write_file_in_root(
        sample_rootfs.root, "/dotdot/dotdot/secret.txt", b"pwned\n", mode=0o644, uid=0, gid=0
    )
    assert sample_rootfs.secret.read_bytes() == sample_rootfs.secret_content
    assert (sample_rootfs.root / "secret.txt").read_bytes() == b"pwned\n"


def test_write_file_in_root_with_dotdot_in_the_path_lands_inside_the_root(
    sample_rootfs: SampleImage,
) -> None:
    host_dir = sample_rootfs.secret.parent
    write_file_in_root(
        sample_rootfs.root, "/../../planted.txt", b"pwned\n", mode=0o644, uid=0, gid=0
    )
    write_file_in_root(
        sample_rootfs.root, "/etc/../../secret.txt", b"pwned\n", mode=0o644, uid=0, gid=0
    )
    assert (sample_rootfs.root / "planted.txt").read_bytes() == b"pwned\n"
    assert not (host_dir / "planted.txt").exists()
    assert (sample_rootfs.root / "secret.txt").read_bytes() == b"pwned\n"
    assert sample_rootfs.secret.read_bytes() == sample_rootfs.secret_content


def test_write_file_in_root_rejects_an_existing_directory(sample_rootfs: SampleImage) -> None:
    with pytest.raises(InvalidRequestError, match="is a directory"):
        write_file_in_root(sample_rootfs.root, "/etc/apt", b"x", mode=0o644, uid=0, gid=0)
    with pytest.raises(InvalidRequestError, match="is a directory"):
        write_file_in_root(sample_rootfs.root, "/", b"x", mode=0o644, uid=0, gid=0)
    assert (sample_rootfs.root / "etc" / "apt").is_dir()


def test_write_file_in_root_breaks_a_hard_link_instead_of_changing_the_other_name(
    sample_rootfs: SampleImage,
) -> None:
    write_file_in_root(
        sample_rootfs.root, "/etc/hostname.hardlink", b"new\n", mode=0o644, uid=0, gid=0
    )
    assert (sample_rootfs.root / "etc" / "hostname.hardlink").read_bytes() == b"new\n"
    assert (sample_rootfs.root / "etc" / "hostname").read_bytes() == b"sandbox\n"


def test_write_file_in_root_replaces_a_fifo_without_blocking_on_it(
    sample_rootfs: SampleImage,
) -> None:
    write_file_in_root(sample_rootfs.root, "/tmp/fifo", b"data\n", mode=0o644, uid=0, gid=0)
    assert stat.S_ISREG(os.stat(sample_rootfs.root / "tmp" / "fifo").st_mode)
    assert (sample_rootfs.root / "tmp" / "fifo").read_bytes() == b"data\n"


# -- opening and walking image content without following or waiting --------------------------


def test_open_regular_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SpecialFileError):
        open_regular(tmp_path / "fifo")


def test_open_regular_refuses_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"host\n")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(SpecialFileError):
        open_regular(tmp_path / "link")


def test_open_regular_reads_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"data\n")
    with open(open_regular(tmp_path / "file"), "rb") as f:
        assert f.read() == b"data\n"


def test_lstat_beneath_refuses_a_path_through_a_symlinked_parent(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "secret").mkdir(parents=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "probe").symlink_to(host)
    rootfd = open_root(tree)
    try:
        with pytest.raises(OSError, match="symbolic links") as caught:
            lstat_beneath(rootfd, "probe/secret")
        assert caught.value.errno == errno.ELOOP
        assert stat.S_ISLNK(lstat_beneath(rootfd, "probe").st_mode)
    finally:
        os.close(rootfd)


def test_walk_tree_lists_special_files_and_never_enters_a_symlinked_directory(
    tmp_path: Path,
) -> None:
    host = tmp_path / "host"
    (host / "hostdir").mkdir(parents=True)
    tree = tmp_path / "tree"
    (tree / "b").mkdir(parents=True)
    os.mkfifo(tree / "b" / "fifo")
    (tree / "a").symlink_to(host)
    (tree / "c").write_bytes(b"x")
    walked = list(walk_tree(tree, sort=True))
    assert [rel for rel, _ in walked] == ["a", "b", "b/fifo", "c"]
    kinds = {rel: stat.S_IFMT(st.st_mode) for rel, st in walked}
    assert kinds["a"] == stat.S_IFLNK
    assert kinds["b/fifo"] == stat.S_IFIFO


def test_write_file_in_root_never_writes_into_a_fifo_it_finds_after_replacing(
    sample_rootfs: SampleImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a process running over the root could do between the replacement and the open:
    # put a FIFO back, with a reader waiting on it.
    fifo = sample_rootfs.root / "tmp" / "raced"
    reader = None

    def race(parent: int, name: str, path: str) -> None:
        nonlocal reader
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    monkeypatch.setattr("sandtree.engine.layers._paths._replace_unsafe_existing", race)
    try:
        with pytest.raises(InvalidRequestError, match="not a regular file"):
            write_file_in_root(sample_rootfs.root, "/tmp/raced", b"x", mode=0o644, uid=0, gid=0)
        assert reader is not None
        assert os.read(reader, 1) == b""  # the open was let go, nothing written into it
    finally:
        if reader is not None:
            os.close(reader)


def test_walk_tree_does_not_enter_a_directory_swapped_for_a_symlink_while_it_walks(
    tmp_path: Path,
) -> None:
    # A run's upper is walked while the sandbox writes: it can swap a directory the walk has
    # just listed for a symlink to the host before the walk goes in.
    host = tmp_path / "host"
    host.mkdir()
    (host / "host-file").write_bytes(b"x")
    tree = tmp_path / "tree"
    (tree / "dir").mkdir(parents=True)
    walk = walk_tree(tree)
    assert next(walk)[0] == "dir"
    (tree / "dir").rmdir()
    (tree / "dir").symlink_to(host)
    assert list(walk) == []
