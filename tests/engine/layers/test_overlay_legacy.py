"""Layer stacks on kernels without ``lowerdir+`` (Linux < 6.8: Debian 12's 6.1, RHEL 9's 5.14):
mounted through ``mount(2)``, whose options must fit in one page. The deepest stack is computed
from the store's real path lengths, and the engine keeps every stack within it.

This host's kernel has ``lowerdir+``; the legacy path is forced here, and the stock-host VM
(``tests/vm``) runs it on a real 6.1 kernel."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import pytest

from sandtree.engine.layers import _overlay
from sandtree.engine.layers._overlay import OverlayError, legacy_max_lowers
from sandtree.engine.layers._store import LayerStore
from sandtree.testing import make_child, make_engine, read_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting overlays needs root")


@pytest.fixture
def legacy_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mount as a kernel without the new mount API's ``lowerdir+`` must."""
    monkeypatch.setattr(_overlay, "_new_api", False)


def _layers(store: LayerStore, count: int) -> list[str]:
    ids = []
    for i in range(count):
        staging = store.new_staging_dir()
        (staging / f"f{i}").write_text(str(i))
        layer_id, _ = store.adopt(staging)
        ids.append(layer_id)
    return ids


@pytest.mark.parametrize(("lower", "upper", "work"), [(39, 46, 45), (10, 10, 10), (200, 90, 90)])
def test_the_computed_limit_fills_one_page_of_options_and_one_more_layer_overflows_it(
    lower: int, upper: int, work: int
) -> None:
    most = legacy_max_lowers(lower=lower, upper=upper, work=work)
    prefix = len(_overlay._fd_path(99999, ""))  # at least as long as any fd this process has

    def options(count: int) -> bytes:
        paths = ["/" * (prefix + lower)] * count
        up, wk = "u" * (prefix + upper), "w" * (prefix + work)
        return _overlay._legacy_options(paths, up, wk, volatile=True)

    assert most > 0
    assert len(options(most)) < 4096
    assert len(options(most + 1)) >= 4096 or most == _overlay.MAX_LOWER_LAYERS


def test_a_run_mounts_the_deepest_stack_the_store_computes_and_a_page_more_is_refused(
    tmp_path: Path, legacy_kernel: None
) -> None:
    # The limit counts each path with the longest descriptor number this process may get, so
    # a mount with a short one has room to spare: twice the limit surely overflows.
    store = LayerStore(tmp_path / "store", uid_shift=100000)
    most = store.max_lowers()
    layers = _layers(store, 2 * most)

    deepest = store.prepare_run(str(uuid.uuid4()), layers[:most])
    try:
        assert (deepest.merged / "f0").read_text() == "0"
        assert (deepest.merged / f"f{most - 1}").read_text() == str(most - 1)
    finally:
        store.release_run(deepest)
    with pytest.raises(OverlayError) as too_deep:
        store.prepare_run(str(uuid.uuid4()), layers)
    assert too_deep.value.errno == errno.E2BIG
    assert 40 < most < 100  # the paths are short: /proc/self/fd/N/layers/<id>


@pytest.mark.anyio
async def test_a_long_chain_on_a_legacy_kernel_keeps_every_stack_mountable(
    tmp_path: Path, rootfs: Path, legacy_kernel: None
) -> None:
    # max_stack_layers asks for more than one page holds: the mountable depth wins.
    async with make_engine(tmp_path / "data", max_stack_layers=400) as engine:
        image = await engine.import_local(rootfs)
        most = LayerStore(tmp_path / "probe", uid_shift=100000).max_lowers()
        for i in range(most + 20):
            image = await make_child(engine, image, f"write /data/f{i} {i}")
        final = engine.resolve_image(image.uuid)

        assert final.depth == most + 20
        assert len(final.layers) < most
        assert read_file(engine, final, "/data/f0") == b"0"
        assert read_file(engine, final, f"/data/f{most + 19}") == str(most + 19).encode()
