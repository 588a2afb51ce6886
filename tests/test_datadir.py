"""The data dir is the server's alone: directories 0700, databases 0600, also when found
with other modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandtree._datadir import private_dir, private_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_private_dir_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        made = private_dir(tmp_path / "a" / "data")
    finally:
        os.umask(old)

    assert made == tmp_path / "a" / "data"
    assert _mode(made) == 0o700


def test_an_existing_world_readable_dir_is_made_0700(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o777)

    private_dir(data)

    assert _mode(data) == 0o700


def test_a_database_and_its_wal_and_shm_are_made_0600(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    for path in (db, tmp_path / "x.db-wal", tmp_path / "x.db-shm"):
        path.write_bytes(b"")
        os.chmod(path, 0o644)

    private_file(db)

    assert [_mode(tmp_path / n) for n in ("x.db", "x.db-wal", "x.db-shm")] == [0o600] * 3


def test_a_missing_file_is_created_empty_and_0600(tmp_path: Path) -> None:
    made = private_file(tmp_path / "new.db")

    assert made.read_bytes() == b""
    assert _mode(made) == 0o600


def test_a_symlink_at_a_database_side_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    (tmp_path / "x.db-wal").symlink_to(target)

    private_file(tmp_path / "x.db")

    assert _mode(target) == 0o644
