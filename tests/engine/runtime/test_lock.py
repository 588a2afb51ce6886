"""One server per data dir: the lock file refuses a second process, not a second holder in
the same process, and goes with its holder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandtree.engine.runtime._lock import DataDirLock
from sandtree.errors import ConflictError

_HOLD = """
import sys, pathlib
from sandtree.engine.runtime._lock import DataDirLock
from sandtree.errors import ConflictError
try:
    DataDirLock(pathlib.Path(sys.argv[1])).acquire()
except ConflictError as e:
    print(e)
    sys.exit(3)
print("acquired")
"""


def _other_process(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _HOLD, str(data_dir)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_a_second_process_on_a_held_data_dir_is_refused_with_what_to_do(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path).acquire()
    try:
        other = _other_process(tmp_path)
    finally:
        lock.release()

    assert other.returncode == 3, other
    assert str(tmp_path) in other.stdout
    assert "--data-dir" in other.stdout


def test_the_lock_is_free_again_once_its_last_holder_releases_it(tmp_path: Path) -> None:
    outer, inner = DataDirLock(tmp_path).acquire(), DataDirLock(tmp_path).acquire()
    inner.release()
    still_held = _other_process(tmp_path)
    outer.release()
    free = _other_process(tmp_path)

    assert still_held.returncode == 3
    assert free.stdout.strip() == "acquired"


def test_a_data_dir_another_process_holds_raises_conflict(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD + "sys.stdout.flush(); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "acquired"
        with pytest.raises(ConflictError, match="another sandtree server"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
