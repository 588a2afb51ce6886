"""A small image root filesystem under tmp_path, owned by shifted ids, with hostile symlinks."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest

UID_SHIFT = 100000
# 2023-11-14 22:13:20 UTC, so listings are reproducible.
MTIME = 1_700_000_000
HOST_SECRET = b"HOST SECRET do not leak\n"

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
"""
GROUP = b"""root:x:0:
adm:x:4:app
app:x:1000:
"""


@dataclasses.dataclass(frozen=True)
class SampleImage:
    root: Path
    #: A file outside the root that nothing may ever read or change, and its content.
    secret: Path
    secret_content: bytes
    uid_shift: int
    #: The mtime of every file that is not a symlink.
    mtime: int


@pytest.fixture
def sample_rootfs(tmp_path: Path) -> SampleImage:
    """Build the sample image; every file is owned by image root unless noted."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(HOST_SECRET)
    root = tmp_path / "rootfs"
    files = {
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/hostname": b"sandbox\n",
        "etc/apt/sources.list": b"deb http://deb.debian.org/debian bookworm main\n",
        "etc/apt/apt.conf.d/00proxy": b'Acquire::http::Proxy "none";\n',
        "home/app/notes.txt": b"first line\nTODO: fix the thing\nthird line\n",
        "usr/lib/libdemo.so": b"\x7fELF\x00\x00binary TODO inside\n",
        "srv/app/main.py": b"import os\n# TODO: python todo\nprint('hi')\n",
        "srv/app/README.md": b"# Demo\nTODO: document\n",
        "srv/app/vendor/lib.py": b"# TODO: vendored\n",
        # The image's own file with the same name as the host secret: escapes land here.
        "secret.txt": b"image secret.txt\n",
    }
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (root / "tmp").mkdir()
    os.mkfifo(root / "tmp" / "fifo")
    os.mknod(root / "tmp" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    _make_socket(root / "tmp", "app.sock")
    os.link(root / "etc" / "hostname", root / "etc" / "hostname.hardlink")
    links = {
        "lib": "usr/lib",
        "etc/evil": str(secret),
        "etc/up": "../../secret.txt",
        "etc/dangling": "/does/not/exist",
        "hostdir": str(tmp_path),
        "dotdot": "..",
        "srv/app/hostlink": str(tmp_path),
    }
    for rel, target_text in links.items():
        os.symlink(target_text, root / rel)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = os.path.join(dirpath, name) if name else dirpath
            os.chown(path, UID_SHIFT, UID_SHIFT, follow_symlinks=False)
            if not os.path.islink(path):
                os.utime(path, (MTIME, MTIME))
    os.chown(root / "home" / "app", UID_SHIFT + 1000, UID_SHIFT + 1000)
    os.chown(root / "home" / "app" / "notes.txt", UID_SHIFT + 1000, UID_SHIFT + 4)
    os.utime(root / "home" / "app", (MTIME, MTIME))
    return SampleImage(
        root=root, secret=secret, secret_content=HOST_SECRET, uid_shift=UID_SHIFT, mtime=MTIME
    )


def _make_socket(directory: Path, name: str) -> None:
    # AF_UNIX paths are limited to 108 bytes and tmp_path can be longer, so bind relatively.
    cwd = os.getcwd()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(directory)
        sock.bind(name)
    finally:
        os.chdir(cwd)
        sock.close()
