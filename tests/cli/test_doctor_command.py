"""``sandtree doctor`` as a user runs it, and ``sandtree serve`` refusing a host that fails a
required check (a data dir on ramfs, which keeps no xattrs) in one line with the fix."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the host checks' probes need root")

#: How long one CLI command may take before a test gives up on it.
DEADLINE = 60.0
#: Every check, in the order doctor prints them.
NAMES = [
    "root", "kernel", "overlayfs", "overlay-layers", "cgroups", "user-namespaces", "seccomp",
    "crun", "runc", "runsc", "iptables", "iproute2", "disk", "filesystem", "xattrs",
    "overlay-upper",
]  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)


def _sandtree(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sandtree", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,
        check=False,
    )


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mounted for the test: a real filesystem that keeps no xattrs at all."""
    target = tmp_path / "ramfs"
    target.mkdir()
    if _libc.mount(b"ramfs", os.fsencode(target), b"ramfs", 0, None) != 0:
        pytest.fail(f"mount -t ramfs: {os.strerror(ctypes.get_errno())}")
    try:
        yield target
    finally:
        _libc.umount2(os.fsencode(target), 2)  # MNT_DETACH


def test_doctor_prints_every_check_as_status_name_detail_and_exits_0_on_a_good_data_dir(
    tmp_path: Path,
) -> None:
    done = _sandtree("doctor", "--data-dir", str(tmp_path / "data"), home=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split(None, 2) for line in done.stdout.splitlines() if line[:1].isalpha()]
    findings = [row for row in rows if row[0] in ("ok", "warn", "FAIL")]
    assert [name for _, name, _ in findings] == NAMES
    assert "FAIL" not in {status for status, _, _ in findings}
    assert done.stdout.splitlines()[-1] == (
        f"ready: sandtree serve can run here (data in {tmp_path / 'data'})"
    )
    assert not (tmp_path / "data").exists()  # probed on its parent's filesystem, not made


def test_doctor_json_gives_the_same_findings_with_their_fixes_and_says_ready(
    tmp_path: Path,
) -> None:
    done = _sandtree("doctor", "--json", "--data-dir", str(tmp_path), home=tmp_path)
    report = json.loads(done.stdout)

    assert done.returncode == 0, done.stderr
    assert report["ready"] is True
    assert report["data_dir"] == str(tmp_path)
    assert [f["name"] for f in report["findings"]] == NAMES
    assert set(report["findings"][0]) == {"name", "status", "detail", "fix", "required"}
    assert {f["name"] for f in report["findings"] if not f["required"]} >= {"iptables", "disk"}


def test_doctor_on_a_ramfs_data_dir_fails_prints_the_fix_and_exits_1(
    tmp_path: Path, ramfs: Path
) -> None:
    done = _sandtree("doctor", "--data-dir", str(ramfs / "data"), home=tmp_path)
    lines = done.stdout.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("FAIL  xattrs"))

    assert done.returncode == 1
    assert "ramfs at" in lines[failed]
    assert "keeps no trusted.* xattrs" in lines[failed]
    assert lines[failed + 1].split()[:2] == ["fix:", "put"]
    assert "--data-dir DIR or SANDTREE_DATA_DIR" in lines[failed + 1]
    assert done.stderr.strip() == "sandtree cannot serve on this host: xattrs failed"
    json_done = _sandtree("doctor", "--json", "--data-dir", str(ramfs), home=tmp_path)
    assert json_done.returncode == 1
    assert json.loads(json_done.stdout)["ready"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_on_a_ramfs_data_dir_refuses_to_start_in_one_line_with_the_fix(
    tmp_path: Path, ramfs: Path
) -> None:
    port = _free_port()
    data = ramfs / "data"

    done = _sandtree("serve", "--port", str(port), "--data-dir", str(data), home=tmp_path)

    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("Error: host check xattrs failed: ramfs at ")
    assert "keeps no trusted.* xattrs" in errors[0]
    assert "; fix: put the data dir on ext4, xfs (ftype=1) or btrfs" in errors[0]
    assert "listening" not in done.stdout
    assert not data.exists()  # it refused before writing anything
    with contextlib.closing(socket.socket()) as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
