"""Shared fixtures: an anyio backend, test root filesystems and engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandtree.engine import Engine
from sandtree.engine.runtime import enter_private_mount_namespace
from sandtree.testing import build_busybox_rootfs, build_mini_rootfs, make_engine


def pytest_configure(config: pytest.Config) -> None:
    # Overlay mounts made by tests live in a private mount namespace and vanish with pytest;
    # on hybrid-cgroup hosts this also hides the cgroup v2 mount crun refuses to work with.
    enter_private_mount_namespace()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny root filesystem with no real binaries: enough for the fake runtime."""
    return build_mini_rootfs(tmp_path_factory.mktemp("mini") / "rootfs")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine on the fake runtime and an in-memory store."""
    async with make_engine(tmp_path / "data") as eng:
        yield eng
