"""What a writable layer is charged: data, directories, an inode per entry; hard links once,
sparse files at their size."""

from __future__ import annotations

import os
from pathlib import Path

from sandtree.engine.layers._usage import ENTRY_BYTES, LayerUsage, layer_usage


def test_empty_directories_cost_their_blocks_and_an_inode_each(tmp_path: Path) -> None:
    for i in range(100):
        (tmp_path / f"d{i}").mkdir()

    usage = layer_usage(tmp_path)

    assert usage.entries == 100
    assert usage.bytes >= 100 * ENTRY_BYTES + sum(
        os.lstat(tmp_path / f"d{i}").st_blocks * 512 for i in range(100)
    )


def test_a_sparse_file_costs_its_size_not_its_few_blocks(tmp_path: Path) -> None:
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(10 * 1024 * 1024)

    assert layer_usage(tmp_path).bytes >= 10 * 1024 * 1024


def test_a_hard_linked_file_costs_its_data_once_and_each_name(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    single = layer_usage(tmp_path)
    for i in range(10):
        os.link(tmp_path / "f", tmp_path / f"l{i}")

    linked = layer_usage(tmp_path)

    assert linked.entries == 11
    assert linked.bytes == single.bytes + 10 * ENTRY_BYTES


def test_the_entry_cap_is_checked_apart_from_the_byte_cap() -> None:
    assert LayerUsage(bytes=10, entries=6).over(max_bytes=1000, max_entries=5)
    assert not LayerUsage(bytes=10, entries=5).over(max_bytes=1000, max_entries=5)
    assert LayerUsage(bytes=1000, entries=1).over(max_bytes=1000, max_entries=5)
