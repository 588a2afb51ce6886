from __future__ import annotations

import io
import os
import struct
import tarfile
from pathlib import Path

import pytest
from layer_testkit import (
    UID_SHIFT,
    directory,
    fifo,
    file,
    hardlink,
    make_layer,
    opaque,
    snapshot,
    symlink,
    unpack,
    whiteout,
)

from sandtree.engine.layers._export import write_layer_tar
from sandtree.engine.layers._merge import merge_layers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, mknod, trusted.*")

CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
NS_MTIME = {"mtime": "1650000000.987654321"}
RICH = [
    directory(".", mode=0o755),
    directory("etc", pax=NS_MTIME),
    whiteout("etc/debian_version"),
    directory("etc/apt", mode=0o750),
    opaque("etc/apt"),
    file("etc/apt/sources.list", b"deb x\n", pax={"SCHILY.xattr.user.k": "v", **NS_MTIME}),
    directory("home/app", uid=1000, gid=1000),
    file("home/app/.profile", b"export A=1\n", mode=0o600, uid=1000, gid=1000),
    file("usr/bin/passwd", b"\x7fELF passwd", mode=0o4755),
    hardlink("usr/bin/passwd2", "usr/bin/passwd"),
    file(
        "usr/bin/ping",
        b"\x7fELF ping",
        mode=0o755,
        pax={"SCHILY.xattr.security.capability": CAP_NET_RAW.decode("utf-8", "surrogateescape")},
    ),
    symlink("bin", "usr/bin"),
    symlink("usr/bin/sh", "/usr/bin/busybox"),
    fifo("run/initctl"),
    file("nobody-owned", b"?", uid=70000, gid=70000),
]


def _export(layer: Path) -> bytes:
    out = io.BytesIO()
    write_layer_tar(layer, out, uid_shift=UID_SHIFT)
    return out.getvalue()


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_unpacking_the_export_reproduces_the_layer(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, "L", *RICH)
    again = tmp_path / "again"
    again.mkdir()

    stats = unpack(_export(layer), again)

    assert snapshot(again) == snapshot(layer)
    assert stats.warnings == []


def test_whiteouts_and_opaque_dirs_become_oci_markers(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, "L", *RICH)

    members = _members(_export(layer))

    assert members["etc/.wh.debian_version"].isreg()
    assert members["etc/.wh.debian_version"].size == 0
    assert members["etc/apt/.wh..wh..opq"].isreg()
    assert "etc/debian_version" not in members
    assert not any("trusted.overlay" in k for m in members.values() for k in m.pax_headers)


def test_owners_are_unshifted_and_capabilities_return_to_v2(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, "L", *RICH)

    members = _members(_export(layer))

    assert (members["home/app"].uid, members["home/app"].gid) == (1000, 1000)
    assert members["usr/bin/passwd"].uid == 0
    assert members["usr/bin/passwd"].mode == 0o4755
    assert members["nobody-owned"].uid == 65534
    cap = members["usr/bin/ping"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAP_NET_RAW


def test_hardlinks_inside_the_layer_stay_hardlinks(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, "L", *RICH)

    members = _members(_export(layer))

    assert members["usr/bin/passwd2"].islnk()
    assert members["usr/bin/passwd2"].linkname == "usr/bin/passwd"


def test_export_is_sorted_and_reproducible(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, "L", *RICH)

    first, second = _export(layer), _export(layer)

    assert first == second
    names = list(_members(first))
    assert names[0] == "."
    assert names.index("etc") < names.index("etc/apt") < names.index("etc/apt/sources.list")


def test_export_writes_sequentially_to_a_non_seekable_stream(tmp_path: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            self.data += b
            return len(b)

    layer = make_layer(tmp_path, "L", *RICH)
    pipe = Pipe()

    write_layer_tar(layer, pipe, uid_shift=UID_SHIFT)  # type: ignore[arg-type]

    assert bytes(pipe.data) == _export(layer)


def test_merged_layer_exports_and_round_trips(tmp_path: Path) -> None:
    lower = make_layer(tmp_path, "L1", directory("d"), file("d/a", b"a"), file("gone", b"g"))
    upper = make_layer(tmp_path, "L2", directory("d"), file("d/b", b"b"), whiteout("gone"))
    merged = tmp_path / "merged"
    merge_layers([lower, upper], merged)
    again = tmp_path / "again"
    again.mkdir()

    unpack(_export(merged), again)

    assert snapshot(again) == snapshot(merged)
