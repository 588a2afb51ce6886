"""Fixtures for the stock-host VM tests: the image, built once per recipe, or a skip that
says why it cannot be had here."""

from __future__ import annotations

from pathlib import Path

import pytest

from .kit import VmImage, VmUnavailable, ensure_image, vm_unavailable

_HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before -m selects: the mark must be there by then
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = vm_unavailable()
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.vm)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def vm_image() -> VmImage:
    """The stock-host image (a cold build takes several minutes and needs the network)."""
    try:
        return ensure_image()
    except VmUnavailable as exc:
        pytest.skip(str(exc))
