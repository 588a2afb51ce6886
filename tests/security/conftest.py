"""Fixtures of the hostile-tenant suite: a real server on crun with two tenants.

Every test here is an attack. It needs root and crun, like the isolation suite.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .hostile import HostileServer, start_hostile_server

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "the hostile-tenant tests need root (a real server on the real runtime)"
    elif shutil.which("crun") is None:
        reason = "the hostile-tenant tests need crun (apt-get install crun)"
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.isolation)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path
) -> Iterator[HostileServer]:
    """One server per test module, shared by its attacks (each attack must leave it usable)."""
    with start_hostile_server(tmp_path_factory.mktemp("hostile"), busybox_rootfs) as srv:
        yield srv
