from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest
from layer_testkit import (
    MTIME,
    UID_SHIFT,
    build_tar,
    device,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    snapshot,
    symlink,
    unpack,
    whiteout,
)

from sandtree.engine.layers._unpack import unpack_layer
from sandtree.errors import InvalidRequestError, LimitExceededError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, mknod, trusted.*")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    # Nested, so that an escape by "../.." lands inside tmp_path where the test can see it.
    path = tmp_path / "store" / "layers" / "L1"
    path.mkdir(parents=True)
    return path


def _is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _opaque(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
    except OSError:
        return None


def test_whiteout_entry_becomes_char_device_0_0(dest: Path) -> None:
    stats = unpack(build_tar(directory("etc"), whiteout("etc/debian_version")), dest)

    assert _is_whiteout(dest / "etc" / "debian_version")
    assert not (dest / "etc" / ".wh.debian_version").exists()
    assert stats.warnings == []


def test_whiteout_in_a_directory_missing_from_the_tar_creates_the_parent(dest: Path) -> None:
    unpack(build_tar(whiteout("usr/share/doc")), dest)

    assert _is_whiteout(dest / "usr" / "share" / "doc")
    assert os.lstat(dest / "usr" / "share").st_uid == UID_SHIFT


def test_opaque_marker_sets_xattr_and_keeps_earlier_entries_of_the_same_layer(dest: Path) -> None:
    data = build_tar(
        directory("etc/apt"),
        file("etc/apt/sources.list", b"deb new\n"),
        opaque("etc/apt"),
        file("etc/apt/after", b"later\n"),
    )

    unpack(data, dest)

    assert _opaque(dest / "etc" / "apt") == b"y"
    assert sorted(os.listdir(dest / "etc" / "apt")) == ["after", "sources.list"]
    assert not (dest / "etc" / "apt" / ".wh..wh..opq").exists()


def test_opaque_marker_for_a_directory_not_in_the_tar_creates_it(dest: Path) -> None:
    unpack(build_tar(opaque("var/cache")), dest)

    assert (dest / "var" / "cache").is_dir()
    assert _opaque(dest / "var" / "cache") == b"y"


def test_entry_after_its_own_whiteout_in_the_same_layer_wins(dest: Path) -> None:
    data = build_tar(
        whiteout("conf"),
        file("conf", b"new"),
        whiteout("data"),
        file("data/x", b"x"),
    )

    unpack(data, dest)

    assert (dest / "conf").read_bytes() == b"new"
    # "data" was deleted below and recreated here: only this layer's content may show.
    assert (dest / "data").is_dir()
    assert _opaque(dest / "data") == b"y"


def test_whiteout_after_a_same_layer_directory_keeps_it_and_hides_lower_content(
    dest: Path,
) -> None:
    unpack(build_tar(directory("d"), file("d/mine", b"1"), whiteout("d")), dest)

    assert (dest / "d" / "mine").read_bytes() == b"1"
    assert _opaque(dest / "d") == b"y"


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"], ids=["plain", "gzip", "zstd"])
def test_plain_gzip_and_zstd_layers_are_detected_by_magic_bytes(
    tmp_path: Path, compression: str | None
) -> None:
    members = [directory("."), directory("bin"), file("bin/sh", b"#!" + b"x" * 5000, mode=0o755)]
    reference, candidate = tmp_path / "ref", tmp_path / "cand"
    reference.mkdir()
    candidate.mkdir()
    unpack(build_tar(*members), reference)

    stats = unpack(build_tar(*members, compression=compression), candidate)

    assert snapshot(candidate) == snapshot(reference)
    assert stats.files == 2  # the root is not counted
    assert stats.bytes == 5002


def test_explicit_compression_argument_skips_sniffing(dest: Path) -> None:
    data = build_tar(file("a", b"hello"), compression="zstd")

    unpack_layer(io.BytesIO(data), dest, uid_shift=UID_SHIFT, max_bytes=100, compression="zstd")

    assert (dest / "a").read_bytes() == b"hello"


def test_unknown_compression_name_is_rejected(dest: Path) -> None:
    with pytest.raises(InvalidRequestError, match="unknown layer compression"):
        unpack_layer(io.BytesIO(b""), dest, uid_shift=0, max_bytes=1, compression="lz4")


@pytest.mark.parametrize("name", ["../../etc/x", "/abs/../../x", "../escaped", "a/../../b"])
def test_path_traversal_entries_are_skipped_with_a_warning(
    tmp_path: Path, dest: Path, name: str
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    stats = unpack(build_tar(file(name, b"pwned"), file("ok", b"fine")), dest)

    assert (dest / "ok").read_bytes() == b"fine"
    assert any("escapes the layer root" in w for w in stats.warnings)
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert after == sorted([*before, str(dest / "ok")])


def test_dot_dot_that_stays_inside_and_leading_slash_are_normalised(dest: Path) -> None:
    unpack(build_tar(file("/abs/file", b"1"), file("./a/../b", b"2")), dest)

    assert (dest / "abs" / "file").read_bytes() == b"1"
    assert (dest / "b").read_bytes() == b"2"


def test_file_through_an_extracted_symlink_is_skipped_and_the_host_is_untouched(
    tmp_path: Path, dest: Path
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep").write_bytes(b"host data")
    data = build_tar(
        symlink("evil", str(host)),
        file("evil/pwned", b"pwned"),
        file("evil/keep", b"overwritten"),
        directory("evil/sub"),
        symlink("rel", "../../../host"),
        file("rel/pwned2", b"pwned"),
        whiteout("evil/keep"),
        opaque("evil"),
        hardlink("evil/linked", "ok"),
        file("ok", b"ok"),
        hardlink("evil/linked2", "ok"),
        directory("d"),
        file("d/f", b"f"),
        symlink("d", str(host)),
        hardlink("x", "d/f"),
        file("d/f", b"through the replaced dir"),
    )

    stats = unpack(data, dest)

    assert sorted(os.listdir(host)) == ["keep"]
    assert (host / "keep").read_bytes() == b"host data"
    assert os.readlink(dest / "evil") == str(host)
    assert os.readlink(dest / "rel") == "../../../host"
    assert _opaque(host) is None
    assert not (dest / "x").exists()
    assert sum("not a directory" in w for w in stats.warnings) >= 7


def test_symlink_targets_are_stored_verbatim(dest: Path) -> None:
    unpack(build_tar(symlink("lib", "usr/lib"), symlink("sh", "/bin/busybox")), dest)

    assert os.readlink(dest / "lib") == "usr/lib"
    assert os.readlink(dest / "sh") == "/bin/busybox"
    assert os.lstat(dest / "sh").st_uid == UID_SHIFT


def test_hardlink_to_an_earlier_file_of_the_layer_shares_its_inode(dest: Path) -> None:
    unpack(build_tar(file("bin/a", b"data"), hardlink("bin/b", "bin/a")), dest)

    assert os.lstat(dest / "bin" / "a").st_ino == os.lstat(dest / "bin" / "b").st_ino


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "not/yet", "dir"])
def test_hardlink_outside_the_layer_or_to_no_earlier_file_is_rejected(
    tmp_path: Path, dest: Path, target: str
) -> None:
    outside = tmp_path / "store" / "outside"
    outside.write_bytes(b"host")

    stats = unpack(build_tar(directory("dir"), hardlink("link", target), file("not/yet")), dest)

    assert not (dest / "link").exists()
    assert os.lstat(outside).st_nlink == 1
    assert any("hardlink" in w for w in stats.warnings)


def test_device_nodes_are_skipped_with_a_warning(dest: Path) -> None:
    data = build_tar(
        directory("dev"), device("dev/null", 1, 3), device("dev/sda", 8, 0, block=True)
    )

    stats = unpack(data, dest)

    assert os.listdir(dest / "dev") == []
    assert sum("device node skipped" in w for w in stats.warnings) == 2


def test_char_device_0_0_entry_is_kept_as_a_whiteout(dest: Path) -> None:
    unpack(build_tar(device("gone", 0, 0)), dest)

    assert _is_whiteout(dest / "gone")


def test_fifo_is_created(dest: Path) -> None:
    unpack(build_tar(fifo("run/pipe")), dest)

    st = os.lstat(dest / "run" / "pipe")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_decompression_bomb_stops_at_max_bytes(dest: Path) -> None:
    bomb = build_tar(file("zeros", bytes(16 << 20)), compression="gzip")
    assert len(bomb) < 1 << 20

    with pytest.raises(LimitExceededError, match="layer expands past 1048576 bytes"):
        unpack(bomb, dest, max_bytes=1 << 20)

    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= 1 << 20


def test_many_small_files_past_max_bytes_also_stop(dest: Path) -> None:
    data = build_tar(*(file(f"f{i}", bytes(1000)) for i in range(20)))

    with pytest.raises(LimitExceededError):
        unpack(data, dest, max_bytes=10_000)

    assert sum(p.stat().st_size for p in dest.rglob("*")) <= 10_000


def test_flood_of_empty_entries_also_counts_against_max_bytes(dest: Path) -> None:
    data = build_tar(*(directory(f"d{i}") for i in range(100)), compression="gzip")

    with pytest.raises(LimitExceededError):
        unpack(data, dest, max_bytes=10_000)

    assert len(os.listdir(dest)) <= 10_000 // 512 + 1


def test_owners_are_shifted_and_unmapped_ids_become_nobody(dest: Path) -> None:
    data = build_tar(
        directory("home/app", uid=1000, gid=1000),
        file("root-file", uid=0, gid=0),
        file("home/app/own", uid=1000, gid=100),
        file("alien", uid=70000, gid=70000),
        symlink("home/app/link", "own", uid=1000),
    )

    unpack(data, dest)

    def owner(rel: str) -> tuple[int, int]:
        st = os.lstat(dest / rel)
        return st.st_uid, st.st_gid

    assert owner(".") == (UID_SHIFT, UID_SHIFT)
    assert owner("root-file") == (UID_SHIFT, UID_SHIFT)
    assert owner("home/app") == (UID_SHIFT + 1000, UID_SHIFT + 1000)
    assert owner("home/app/own") == (UID_SHIFT + 1000, UID_SHIFT + 100)
    assert owner("home/app/link") == (UID_SHIFT + 1000, UID_SHIFT + 1000)
    assert owner("alien") == (UID_SHIFT + 65534, UID_SHIFT + 65534)


@pytest.mark.parametrize("alien", [4_000_000, -UID_SHIFT, 2**32 - 1])
def test_a_setuid_entry_with_an_owner_outside_the_sandbox_becomes_nobody_with_a_warning(
    dest: Path, alien: int
) -> None:
    # -UID_SHIFT shifted without a check would be host root: a setuid-root file on the host.
    stats = unpack(build_tar(file("sbin/su", b"#!", mode=0o6755, uid=alien, gid=alien)), dest)

    st = os.lstat(dest / "sbin" / "su")
    assert (st.st_uid, st.st_gid) == (UID_SHIFT + 65534, UID_SHIFT + 65534)
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert any("outside 0..65535" in w and "nobody" in w for w in stats.warnings)


def test_setuid_is_kept_for_mapped_owners_and_stripped_for_unmapped(dest: Path) -> None:
    data = build_tar(
        file("passwd", mode=0o4755),
        file("wall", mode=0o2755, gid=5),
        file("x", mode=0o6755, uid=70000, gid=70000),
    )

    unpack(data, dest)

    assert stat.S_IMODE(os.lstat(dest / "passwd").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(dest / "wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(dest / "x").st_mode) == 0o755


def test_modes_and_nanosecond_mtimes_survive_even_for_directories_with_children(
    dest: Path,
) -> None:
    pax = {"mtime": "1600000000.123456789"}
    data = build_tar(
        directory("d", mode=0o700, pax=pax),
        file("d/f", b"x", mode=0o600, pax=pax),
        symlink("d/l", "f"),
        file("old", mtime=1),
    )

    unpack(data, dest)

    d = os.lstat(dest / "d")
    assert stat.S_IMODE(d.st_mode) == 0o700
    assert d.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.lstat(dest / "d" / "f").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.lstat(dest / "d" / "l").st_mtime_ns == MTIME * 10**9
    assert os.lstat(dest / "old").st_mtime_ns == 10**9


def test_root_entry_sets_the_layer_root_metadata(dest: Path) -> None:
    unpack(build_tar(directory(".", mode=0o755, uid=0), file("a")), dest)

    st = os.lstat(dest)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        UID_SHIFT,
        0o755,
        MTIME * 10**9,
    )


def test_user_xattrs_apply_and_trusted_or_security_labels_are_dropped(dest: Path) -> None:
    pax = {
        "SCHILY.xattr.user.origin": "kept",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
    }
    data = build_tar(directory("d", pax=pax), file("d/f", pax=pax))

    stats = unpack(data, dest)

    for rel in ("d", "d/f"):
        assert os.getxattr(dest / rel, "user.origin") == b"kept"
        assert sorted(os.listxattr(dest / rel)) == ["user.origin"]
    assert "dropped xattr trusted.overlay.opaque on 2 entries (not allowed in layers)" in (
        stats.warnings
    )


def test_file_capability_is_stored_owned_by_the_shifted_root(dest: Path) -> None:
    # cap_net_raw+ep as images carry it: a v2 capability with no root id.
    v2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    pax = {"SCHILY.xattr.security.capability": v2.decode("utf-8", "surrogateescape")}

    unpack(build_tar(file("ping", b"\x7fELF", mode=0o755, pax=pax)), dest)

    stored = os.getxattr(dest / "ping", "security.capability")
    assert stored == struct.pack("<IIIIII", 0x03000001, 1 << 13, 0, 0, 0, UID_SHIFT)


def test_later_entry_replaces_an_earlier_one_at_the_same_path(dest: Path) -> None:
    data = build_tar(
        directory("x"), file("x/inner"), file("x", b"now a file"), file("y"), directory("y")
    )

    unpack(data, dest)

    assert (dest / "x").read_bytes() == b"now a file"
    assert (dest / "y").is_dir()


def test_garbage_stream_raises_invalid_request(dest: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not a valid tar archive"):
        unpack(b"this is not a tar archive at all" * 40, dest)


def test_truncated_gzip_raises_invalid_request(dest: Path) -> None:
    data = gzip.compress(build_tar(file("a", bytes(range(256)) * 400)))

    with pytest.raises(InvalidRequestError):
        unpack(data[: len(data) // 2], dest)


def test_layer_ending_right_after_the_last_file_data_is_accepted(dest: Path) -> None:
    # umoci 0.4 writes layers without the final padding and end-of-archive blocks.
    data = build_tar(directory("etc"), file("etc/hello", b"hi\n"))[: 3 * 512 - 509]

    stats = unpack(gzip.compress(data), dest)

    assert (dest / "etc" / "hello").read_bytes() == b"hi\n"
    assert stats.warnings == []


def test_layer_cut_inside_a_file_is_rejected(dest: Path) -> None:
    data = build_tar(directory("etc"), file("etc/hello", b"hi\n"))[: 3 * 512 - 510]

    with pytest.raises(InvalidRequestError, match="truncated in 'etc/hello'"):
        unpack(data, dest)


def test_stream_need_not_be_seekable(dest: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            chunk = self._data.read(min(len(buffer), 7))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = build_tar(file("a", b"streamed"), compression="gzip")

    unpack_layer(Pipe(data), dest, uid_shift=UID_SHIFT, max_bytes=1000)  # type: ignore[arg-type]

    assert (dest / "a").read_bytes() == b"streamed"


def test_unsupported_entry_types_are_skipped(dest: Path) -> None:
    info = tarfile.TarInfo("weird")
    info.type = tarfile.CONTTYPE  # contiguous file: tarfile treats it as regular
    stats = unpack(build_tar((info, b"")), dest)

    assert (dest / "weird").is_file()
    assert stats.warnings == []
