"""How the layer store makes adopted layers durable: fsync per entry, or one syncfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandtree.engine.layers import _store
from sandtree.engine.layers._store import LayerStore


def _staging(store: LayerStore, files: int) -> Path:
    staging = store.new_staging_dir()
    for i in range(files):
        (staging / f"f{i}").write_bytes(b"x" * i)
    return staging


@pytest.mark.parametrize(("files", "syncfs_calls"), [(10, 0), (600, 1)])
def test_large_layers_are_flushed_with_one_syncfs_and_small_ones_per_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int, syncfs_calls: int
) -> None:
    store = LayerStore(tmp_path / "store", uid_shift=100000)
    calls: list[Path] = []
    real = _store.syncfs
    monkeypatch.setattr(_store, "syncfs", lambda path: (calls.append(path), real(path)))

    layer_id, size = store.adopt(_staging(store, files))

    assert len(calls) == syncfs_calls
    assert size == sum(range(files))
    assert len(list(store.path(layer_id).iterdir())) == files
    store.close()
