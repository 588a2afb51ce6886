"""Fixtures of the hostile-tenant suite: a real server on crun with two tenants.

Every test here is an attack. It needs root and crun, like the isolation suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandtree.testing import real_runtime_missing

from .hostile import HostileServer, start_hostile_server

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = real_runtime_missing("the hostile-tenant tests")
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
