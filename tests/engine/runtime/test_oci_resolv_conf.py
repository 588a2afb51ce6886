"""A networked sandbox's /etc/resolv.conf: whatever the image made of that path (a FIFO, a
symlink to a host file, a directory), writing the nameservers never blocks, never follows a
link out of the rootfs and never fails the run."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from sandtree.engine.runtime import Limits, OciRuntime, SandboxSpec

pytestmark = pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed")

SHIFT = 100000
NAMESERVERS = ("192.0.2.53", "192.0.2.54")
EXPECTED = b"nameserver 192.0.2.53\nnameserver 192.0.2.54\n"


def _write(tmp_path: Path, rootfs: Path) -> None:
    runtime = OciRuntime(kind="crun", binary="crun", state_dir=tmp_path / "state", uid_shift=SHIFT)
    spec = SandboxSpec(
        id="st-test",
        rootfs=rootfs,
        workdir=tmp_path / "bundle",
        args=["true"],
        env={},
        cwd="/",
        uid=0,
        gid=0,
        hostname="sandbox",
        limits=Limits(memory_bytes=1 << 30, pids=64, cpus=1.0),
        nameservers=NAMESERVERS,
    )
    runtime._write_resolv_conf(spec)


def _rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    return rootfs


def test_a_fifo_resolv_conf_is_replaced_by_the_nameservers_without_blocking(
    tmp_path: Path,
) -> None:
    rootfs = _rootfs(tmp_path)
    os.mkfifo(rootfs / "etc" / "resolv.conf")

    _write(tmp_path, rootfs)

    st = os.lstat(rootfs / "etc" / "resolv.conf")
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (SHIFT, SHIFT)
    assert (rootfs / "etc" / "resolv.conf").read_bytes() == EXPECTED


def test_a_resolv_conf_symlink_to_a_host_file_is_replaced_not_written_through(
    tmp_path: Path,
) -> None:
    rootfs = _rootfs(tmp_path)
    host_file = tmp_path / "host-resolv.conf"
    host_file.write_bytes(b"nameserver 127.0.0.1\n")
    (rootfs / "etc" / "resolv.conf").symlink_to(host_file)

    _write(tmp_path, rootfs)

    assert host_file.read_bytes() == b"nameserver 127.0.0.1\n"
    assert not (rootfs / "etc" / "resolv.conf").is_symlink()
    assert (rootfs / "etc" / "resolv.conf").read_bytes() == EXPECTED


def test_an_etc_symlink_to_a_host_directory_resolves_inside_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    host_etc = tmp_path / "host-etc"
    host_etc.mkdir()
    (rootfs / "etc").symlink_to(host_etc)  # absolute: the image's own path of that name

    _write(tmp_path, rootfs)

    assert list(host_etc.iterdir()) == []


def test_a_resolv_conf_directory_is_left_alone_and_the_run_goes_on(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    (rootfs / "etc" / "resolv.conf").mkdir()

    _write(tmp_path, rootfs)

    assert (rootfs / "etc" / "resolv.conf").is_dir()
