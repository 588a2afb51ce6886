"""Real-runtime fixtures: engines on crun/runsc, the busybox and Debian minbase images, and
host-side probes (cgroups, processes, mounts) that tell whether a sandbox left anything behind.

Every test in this directory needs root and crun; the whole directory is skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.config import Settings
from sandtree.engine import Engine, ImageRecord, OperationRecord, RunSpec, default_runtimes
from sandtree.engine.runtime._network import NetworkPool
from sandtree.errors import SandtreeError

DEBIAN_CACHE = Path("/var/cache/sandtree-test/debian-minbase")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Tiers for ``parametrize``: gVisor runs are marked so they can be deselected.
TIERS = ["container", pytest.param("gvisor", marks=pytest.mark.gvisor)]
MiB = 1024 * 1024

# Messages debootstrap (and the wget it drives) print when the mirror cannot be reached.
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
    here = Path(__file__).parent
    reason = None
    if os.geteuid() != 0:
        reason = "the isolation tests need root (user namespaces, cgroups, overlay mounts)"
    elif shutil.which("crun") is None:
        reason = "the isolation tests need crun (apt-get install crun)"
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.isolation)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


# -- images ------------------------------------------------------------------------------------


def _build_debian(dest: Path) -> None:
    """debootstrap a minbase bookworm into ``dest`` (a fresh dir next to the cache)."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(dest), DEBIAN_MIRROR],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        log = (dest / "debootstrap" / "debootstrap.log").read_text(errors="replace") if (
            dest / "debootstrap" / "debootstrap.log"
        ).is_file() else ""  # fmt: skip
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
    """The cached Debian minbase rootfs, built once per machine under a file lock."""
    DEBIAN_CACHE.parent.mkdir(parents=True, exist_ok=True)
    lock_path = DEBIAN_CACHE.parent / ".debian-minbase.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (DEBIAN_CACHE / "usr" / "bin" / "apt-get").exists():
            return DEBIAN_CACHE
        for stale in DEBIAN_CACHE.parent.glob(f"{DEBIAN_CACHE.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = DEBIAN_CACHE.parent / f"{DEBIAN_CACHE.name}.tmp-{secrets.token_hex(4)}"
        try:
            _build_debian(staging)
            os.rename(staging, DEBIAN_CACHE)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return DEBIAN_CACHE


@pytest.fixture(scope="session")
def debian_rootfs() -> Path:
    return debian_minbase()


# -- engines -----------------------------------------------------------------------------------


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "memory_limit_bytes": 512 * MiB,
        "pids_limit": 256,
        "default_timeout": 10,
    }
    values.update(overrides)
    return Settings(data_dir=data_dir, **values)


def real_engine(data_dir: Path, *, network: NetworkPool | None = None, **overrides: Any) -> Engine:
    """An engine on crun/runsc with a SQLite store under ``data_dir``."""
    settings = make_settings(data_dir, **overrides)
    return Engine(settings, runtimes=default_runtimes(settings), network=network)


class Sandboxes:
    """One started engine with the busybox image imported: spawn, wait, read output."""

    def __init__(self, engine: Engine, busybox: ImageRecord) -> None:
        self.engine = engine
        self.busybox = busybox

    async def run(self, command: str, *, tier: str = "container", wait: float = 60,
                  **fields: Any) -> OperationRecord:  # fmt: skip
        """Spawn a shell command (unless ``shell=False`` is passed) and wait for it to end."""
        fields.setdefault("image", "tag:busybox")
        fields.setdefault("shell", True)
        fields.setdefault("disposable", True)
        fields.setdefault("timeout", 10)
        spec = RunSpec(command=command, isolation=tier, **fields)
        op = await self.engine.spawn(spec)
        return await self.finish(op, wait=wait)

    async def finish(self, op: OperationRecord, *, wait: float = 60) -> OperationRecord:
        done = await self.engine.wait_operation(op, timeout=wait)
        assert done.status.terminal, f"operation {op.uuid} still {done.status} after {wait} s"
        return done

    async def ok(self, command: str, *, tier: str = "container", **fields: Any) -> str:
        """Run and require SUCCESS with exit code 0; returns stdout."""
        op = await self.run(command, tier=tier, **fields)
        assert op.status == "SUCCESS", (op.status, op.error, op.result and stderr(op))
        assert exit_code(op) == 0, (exit_code(op), stdout(op), stderr(op))
        return stdout(op)

    async def healthy(self, tier: str = "container") -> None:
        """A trivial run right now succeeds: the engine survived whatever came before."""
        assert await self.ok("echo still-fine", tier=tier) == "still-fine\n"


@pytest.fixture
async def sandboxes(tmp_path: Path, busybox_rootfs: Path) -> AsyncIterator[Sandboxes]:
    """A started real engine (default limits of ``make_settings``) with busybox imported."""
    async with real_engine(tmp_path / "data") as engine:
        image = await engine.import_local(busybox_rootfs, tag="busybox")
        yield Sandboxes(engine, image)


@pytest.fixture
def make_sandboxes(
    tmp_path: Path, busybox_rootfs: Path
) -> Iterator[Callable[..., contextlib.AbstractAsyncContextManager[Sandboxes]]]:
    """``async with make_sandboxes(pids_limit=64) as sb:`` — an engine with other settings."""
    counter = iter(range(1000))

    @contextlib.asynccontextmanager
    async def make(network: NetworkPool | None = None,
                   **overrides: Any) -> AsyncIterator[Sandboxes]:  # fmt: skip
        async with real_engine(tmp_path / f"data{next(counter)}", network=network,
                               **overrides) as engine:  # fmt: skip
            image = await engine.import_local(busybox_rootfs, tag="busybox")
            yield Sandboxes(engine, image)

    yield make


# -- network -----------------------------------------------------------------------------------


def network_pool() -> NetworkPool:
    """A pool with a unique prefix and a random /24 of 10.214.0.0/16 (not yet set up)."""
    import random

    return NetworkPool(
        prefix="t" + secrets.token_hex(3),  # hex digits: never an "h", so no clash with veths
        subnet=f"10.214.{random.randrange(256)}.0/24",
    )


@pytest.fixture(scope="session")
def network_works() -> str | None:
    """None when a NetworkPool can be set up here, else why not."""
    pool = network_pool()
    try:
        pool.setup()
        pool.lease()
    except (SandtreeError, OSError) as e:
        return f"sandbox networking does not work on this host: {e}"
    finally:
        with contextlib.suppress(Exception):
            pool.teardown()
    return None


@pytest.fixture
def pool(network_works: str | None) -> NetworkPool:
    """A fresh pool for an engine to set up and tear down (skips if networking is broken)."""
    if network_works is not None:
        pytest.skip(network_works)
    return network_pool()


# -- output helpers ----------------------------------------------------------------------------


def _stream(op: OperationRecord, name: str) -> str:
    import base64

    assert op.result is not None, f"operation {op.uuid} has no result: {op.status} {op.error}"
    doc = op.result[name]
    if doc["encoding"] == "base64":
        return base64.b64decode(doc["value"]).decode("utf-8", "replace")
    return str(doc["value"])


def stdout(op: OperationRecord) -> str:
    return _stream(op, "stdout")


def stderr(op: OperationRecord) -> str:
    return _stream(op, "stderr")


def exit_code(op: OperationRecord) -> int:
    assert op.result is not None, f"operation {op.uuid} has no result: {op.status} {op.error}"
    return int(op.result["state"]["exit_code"])


# -- host probes -------------------------------------------------------------------------------


def sandbox_id(op: OperationRecord) -> str:
    return f"st-{op.uuid}"


def cgroup_dirs(op: OperationRecord) -> list[Path]:
    """The sandbox's cgroup directories that still exist on the host."""
    return [
        CgroupPath
        for controller in ("memory", "pids", "cpu", "cpuacct")
        if (CgroupPath := CGROUP_ROOT / controller / "sandtree" / sandbox_id(op)).exists()
    ]


def host_pids_in_cgroup(op: OperationRecord) -> list[int]:
    """Host processes whose cgroup (any controller) is the sandbox's, found via /proc."""
    marker = f"/sandtree/{sandbox_id(op)}"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{entry}/cgroup").read_text()
            if any(line.split(":", 2)[-1].startswith(marker) for line in text.splitlines()):
                found.append(int(entry))
    return found


def host_pids_with(needle: str) -> list[int]:
    """Host processes whose command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            if needle.encode() in cmdline:
                found.append(int(entry))
    return found


def mounts_under(prefix: str) -> list[str]:
    """Mount points of this process's namespace at or below ``prefix``."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
            points.append(point)
    return points


async def eventually(check: Callable[[], bool], *, timeout: float = 10) -> bool:
    """Poll a host-side condition that settles asynchronously (cgroup removal, reaping)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
