"""Fixtures for the engine tests: a tiny root filesystem and an image made from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandtree.engine import Engine, ImageRecord
from sandtree.testing import build_mini_rootfs


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mini_rootfs(tmp_path_factory.mktemp("mini") / "rootfs")


@pytest.fixture
async def base(engine: Engine, rootfs: Path) -> ImageRecord:
    """The mini root filesystem imported as ``tag:base`` into the test's engine."""
    return await engine.import_local(rootfs, tag="base")
