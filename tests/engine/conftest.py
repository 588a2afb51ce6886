"""Fixtures for the engine tests: an image made from the tiny root filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandtree.engine import Engine, ImageRecord


@pytest.fixture
async def base(engine: Engine, rootfs: Path) -> ImageRecord:
    """The mini root filesystem imported as ``tag:base`` into the test's engine."""
    return await engine.import_local(rootfs, tag="base")
