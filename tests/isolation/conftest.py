"""Real-runtime fixtures: engines on crun/runsc, the busybox and Debian minbase images, and a
network pool. Every test here needs root and crun; the whole directory is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine.runtime._network import NetworkPool
from sandtree.errors import SandtreeError
from sandtree.testing import real_runtime_missing

from .kit import Sandboxes, SandboxesFactory, real_engine

DEBIAN_CACHE = Path("/var/cache/sandtree-test/debian-minbase")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
_HERE = Path(__file__).parent
# What debootstrap (and the wget it drives) print when the mirror cannot be reached.
_UNREACHABLE = (
    "failed getting release file",
    "couldn't download",
    "temporary failure",
    "could not resolve",
    "unable to resolve",
    "connection refused",
    "connection timed out",
    "network is unreachable",
    "no route to host",
    "name or service not known",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = real_runtime_missing("the isolation tests")
    if reason is None:
        return
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=reason))


# -- images ------------------------------------------------------------------------------------


def _debootstrap(dest: Path) -> None:
    """debootstrap a minbase bookworm into ``dest``; skip the test if the mirror is away."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    try:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(dest), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"debootstrap from {DEBIAN_MIRROR} did not finish in 20 minutes")
    if done.returncode != 0:
        log_file = dest / "debootstrap" / "debootstrap.log"
        log = log_file.read_text(errors="replace") if log_file.is_file() else ""
        text = f"{done.stdout}\n{done.stderr}\n{log}"
        tail = " | ".join(text.strip().splitlines()[-3:])
        if any(marker in text.lower() for marker in _UNREACHABLE):
            pytest.skip(f"the Debian mirror {DEBIAN_MIRROR} is unreachable: {tail}")
        raise RuntimeError(f"debootstrap failed (exit {done.returncode}): {tail}")
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in dest.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def debian_minbase() -> Path:
    """The Debian minbase rootfs, built once per machine (outside the checkout), under a lock
    so that parallel test sessions neither race nor see a half-built tree."""
    DEBIAN_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(DEBIAN_CACHE.parent / ".debian-minbase.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (DEBIAN_CACHE / "usr" / "bin" / "apt-get").exists():
            return DEBIAN_CACHE
        for stale in DEBIAN_CACHE.parent.glob(f"{DEBIAN_CACHE.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = DEBIAN_CACHE.parent / f"{DEBIAN_CACHE.name}.tmp-{secrets.token_hex(4)}"
        try:
            _debootstrap(staging)
            shutil.rmtree(DEBIAN_CACHE, ignore_errors=True)  # an incomplete tree, if any
            os.rename(staging, DEBIAN_CACHE)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return DEBIAN_CACHE


@pytest.fixture(scope="session")
def debian_rootfs() -> Path:
    return debian_minbase()


# -- engines -----------------------------------------------------------------------------------


@pytest.fixture
async def sandboxes(tmp_path: Path, busybox_rootfs: Path) -> AsyncIterator[Sandboxes]:
    """A started real engine (the limits of ``make_settings``) with busybox imported."""
    async with real_engine(tmp_path / "data") as engine:
        image = await engine.import_local(busybox_rootfs, tag="busybox")
        yield Sandboxes(engine, image)


@pytest.fixture
def make_sandboxes(tmp_path: Path, busybox_rootfs: Path) -> SandboxesFactory:
    """``async with make_sandboxes(pids_limit=64) as sb:`` — an engine with other settings."""
    counter = iter(range(1_000_000))

    @contextlib.asynccontextmanager
    async def make(
        network: NetworkPool | None = None, **overrides: Any
    ) -> AsyncIterator[Sandboxes]:
        data_dir = tmp_path / f"data{next(counter)}"
        async with real_engine(data_dir, network=network, **overrides) as engine:
            image = await engine.import_local(busybox_rootfs, tag="busybox")
            yield Sandboxes(engine, image)

    return make


# -- network -----------------------------------------------------------------------------------


def new_pool() -> NetworkPool:
    """A pool with a unique prefix and a random /24 of 10.214.0.0/16 (not yet set up)."""
    return NetworkPool(
        prefix="t" + secrets.token_hex(3),  # hex digits: never an "h", so no clash with veths
        subnet=f"10.214.{random.randrange(256)}.0/24",
    )


@pytest.fixture(scope="session")
def network_problem() -> str | None:
    """None when a NetworkPool can be set up and leased here, else why not."""
    pool = new_pool()
    try:
        pool.setup()
        pool.release(pool.lease())
    except (SandtreeError, OSError) as e:
        return f"sandbox networking does not work on this host: {e}"
    finally:
        with contextlib.suppress(SandtreeError, OSError):
            pool.teardown()
    return None


@pytest.fixture
def pool(network_problem: str | None) -> NetworkPool:
    """A fresh pool for an engine to set up and tear down (skips if networking is broken)."""
    if network_problem is not None:
        pytest.skip(network_problem)
    return new_pool()
